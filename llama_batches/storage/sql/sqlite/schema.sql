-- Statements about the schema itself: the version table, and what the catalogue knows of a table.

-- name: create_versions
CREATE TABLE IF NOT EXISTS llama_batches_schema (
    store TEXT NOT NULL,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (store, version)
)

-- name: table_exists
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?

-- name: store_versions
SELECT store, kind, MAX(version) FROM llama_batches_schema GROUP BY store, kind ORDER BY store

-- name: store_version
SELECT kind, MAX(version) FROM llama_batches_schema WHERE store = ? GROUP BY kind

-- name: record_version
INSERT INTO llama_batches_schema (store, kind, version, name) VALUES (?, ?, ?, ?)

-- name: columns
SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table'

-- name: add_lease_column
ALTER TABLE {t} ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0
