-- The statements of the sqlite backend on leases; {t} is the table's name (other {...} are filled in
-- by the code). Loaded by llama_batches.storage.schema.queries: a statement follows its `-- name:` line.

-- name: take
INSERT INTO {t} (key, holder, expires_at, epoch)
    VALUES (?, ?, ?, 1)
    ON CONFLICT (key) DO UPDATE
    SET holder = excluded.holder, expires_at = excluded.expires_at, epoch = {t}.epoch + 1, failures =
        {t}.failures + ({t}.holder <> '')
    WHERE {t}.expires_at <= ?
    RETURNING epoch, failures

-- name: candidates
SELECT b.owner, b.id
    FROM {table} b
    LEFT JOIN {t} l
    ON l.key = b.id
    WHERE b.tag IN ({marks}) AND (l.key IS NULL OR l.expires_at <= ?)
    ORDER BY b.created_at, b.seq
    LIMIT ?

-- name: renew
UPDATE {t}
    SET expires_at = ?
    WHERE key = ? AND epoch = ? AND holder = ?

-- name: release
UPDATE {t}
    SET holder = '', expires_at = ?, failures = failures + ?
    WHERE key = ? AND epoch = ? AND holder = ?

-- name: holder
SELECT holder
    FROM {t}
    WHERE key = ? AND expires_at > ? AND holder <> ''

-- name: current
SELECT holder, epoch, failures
    FROM {t}
    WHERE key = ?

-- name: fence_epoch
SELECT epoch
    FROM {t}
    WHERE key = ?
