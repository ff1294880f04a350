-- A lease table: one row per key, never deleted, so that its epoch (the fencing token) only grows.
CREATE TABLE IF NOT EXISTS {t} (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    epoch BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0
);
