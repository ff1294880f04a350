-- A lease table: one row per key, never deleted, so that its epoch (the fencing token) only grows.
CREATE TABLE IF NOT EXISTS {t} (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0
);
