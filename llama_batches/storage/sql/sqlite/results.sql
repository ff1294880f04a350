-- The statements of the sqlite backend on results; {t} is the table's name (other {...} are filled in
-- by the code). Loaded by llama_batches.storage.schema.queries: a statement follows its `-- name:` line.

-- name: insert
INSERT INTO {t} (batch_id, line, owner, custom_id, ok, output, input_tokens, output_tokens, cached_tokens,
        reasoning_tokens)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING

-- name: lines
SELECT line
    FROM {t}
    WHERE batch_id = ?

-- name: read
SELECT batch_id, line, custom_id, ok, output, input_tokens, output_tokens, cached_tokens, reasoning_tokens
    FROM {t}
    WHERE batch_id = ? AND ok = ? AND line > ?
    ORDER BY line
    LIMIT ?

-- name: totals
SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0), COALESCE(SUM(input_tokens), 0),
        COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(reasoning_tokens), 0)
    FROM {t}
    WHERE batch_id = ?

-- name: delete
DELETE
    FROM {t}
    WHERE batch_id = ?
