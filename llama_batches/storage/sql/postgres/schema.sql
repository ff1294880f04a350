-- Statements about the schema itself: the version table, and what the catalogue knows of a table.

-- name: lock
SELECT pg_advisory_xact_lock(hashtext('llama_batches_schema'))

-- name: create_versions
CREATE TABLE IF NOT EXISTS llama_batches_schema (
    store TEXT NOT NULL,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (store, version)
)

-- name: table_exists
SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = lower($1)

-- name: store_versions
SELECT store, kind, MAX(version) FROM llama_batches_schema GROUP BY store, kind ORDER BY store

-- name: store_version
SELECT kind, MAX(version) FROM llama_batches_schema WHERE store = $1 GROUP BY kind

-- name: record_version
INSERT INTO llama_batches_schema (store, kind, version, name) VALUES ($1, $2, $3, $4)

-- name: columns
SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = current_schema()

-- name: add_lease_column
-- only when adopting a lease table that lacks the column: ALTER TABLE takes an ACCESS EXCLUSIVE lock even when
-- the column exists, queueing every lease statement of every worker behind any open fenced write
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {column} BIGINT NOT NULL DEFAULT 0
