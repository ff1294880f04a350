-- The statements of the postgres backend on leases; {t} is the table's name (other {...} are filled in
-- by the code). Loaded by llama_batches.storage.schema.queries: a statement follows its `-- name:` line.

-- name: take
INSERT INTO {t} (key, holder, expires_at, epoch)
    SELECT key, $2::text, $3::float8, 1
    FROM unnest($1::text[]) AS key
    ON CONFLICT (key) DO UPDATE
    SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at, epoch = {t}.epoch + 1, failures =
        {t}.failures + (CASE WHEN {t}.holder <> '' THEN 1 ELSE 0 END)
    WHERE {t}.expires_at <= $4
    RETURNING key, epoch, failures

-- name: existing
-- lease rows of the candidates, each locked unless another transaction holds it (a fenced write of the
-- expired holder, still open): such a key is left out rather than waited for
SELECT key
    FROM {t}
    WHERE key = ANY($1::text[])

-- name: lock_timeout
-- a claim never waits long on a lock (a paused or partitioned worker's transaction): it fails and the next
-- poll retries
SET LOCAL lock_timeout = '2s'

-- name: lockable
SELECT key
    FROM {t}
    WHERE key = ANY($1::text[])
    FOR UPDATE SKIP LOCKED

-- name: candidates
SELECT b.owner, b.id
    FROM {table} b
    WHERE b.tag = ANY($1::text[]) AND NOT EXISTS (SELECT 1 FROM {t} l WHERE l.key = b.id AND l.expires_at > $2)
    ORDER BY b.created_at, b.seq
    LIMIT $3
    FOR UPDATE OF b SKIP LOCKED

-- name: renew
UPDATE {t}
    SET expires_at = $1
    WHERE key = $2 AND epoch = $3 AND holder = $4

-- name: release
UPDATE {t}
    SET holder = '', expires_at = $1, failures = failures + $2
    WHERE key = $3 AND epoch = $4 AND holder = $5

-- name: holder
SELECT holder
    FROM {t}
    WHERE key = $1 AND expires_at > $2 AND holder <> ''

-- name: current
SELECT holder, epoch, failures
    FROM {t}
    WHERE key = $1

-- name: fence_epoch
SELECT epoch
    FROM {t}
    WHERE key = $1
    FOR SHARE
