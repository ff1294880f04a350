-- The statements of the postgres backend on results; {t} is the table's name (other {...} are filled in
-- by the code). Loaded by llama_batches.storage.schema.queries: a statement follows its `-- name:` line.

-- name: insert
INSERT INTO {t} (batch_id, line, owner, custom_id, ok, output, input_tokens, output_tokens, cached_tokens,
        reasoning_tokens)
    SELECT *
    FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bool[], $6::bytea[], $7::bigint[],
        $8::bigint[], $9::bigint[], $10::bigint[])
    ON CONFLICT DO NOTHING

-- name: lines
SELECT line
    FROM {t}
    WHERE batch_id = $1

-- name: read
SELECT batch_id, line, custom_id, ok, output, input_tokens, output_tokens, cached_tokens, reasoning_tokens
    FROM {t}
    WHERE batch_id = $1 AND ok = $2 AND line > $3
    ORDER BY line
    LIMIT $4

-- name: totals
SELECT COUNT(*) FILTER (WHERE ok), COUNT(*) FILTER (WHERE NOT ok), COALESCE(SUM(input_tokens), 0),
        COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(reasoning_tokens), 0)
    FROM {t}
    WHERE batch_id = $1

-- name: delete
DELETE
    FROM {t}
    WHERE batch_id = $1
