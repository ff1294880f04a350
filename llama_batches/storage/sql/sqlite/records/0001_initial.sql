-- A table of owned records (batches, files metadata, ledgers): the JSON document in data, newest first by
-- (created_at, seq), a tag (a batch's status) for the scheduler, and a version for compare-and-set.
CREATE TABLE IF NOT EXISTS {t} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    tag TEXT,
    version INTEGER NOT NULL DEFAULT 1,
    data TEXT NOT NULL,
    UNIQUE (owner, id)
);
CREATE INDEX IF NOT EXISTS {t}_by_time ON {t} (owner, created_at, seq);
CREATE INDEX IF NOT EXISTS {t}_by_tag ON {t} (owner, tag, created_at, seq);
CREATE INDEX IF NOT EXISTS {t}_by_tag_only ON {t} (tag, created_at, seq);
