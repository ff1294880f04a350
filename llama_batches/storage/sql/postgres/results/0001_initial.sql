-- A result log: one row per finished request of a batch, keyed by (batch_id, line).
CREATE TABLE IF NOT EXISTS {t} (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    owner TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    ok BOOLEAN NOT NULL,
    output BYTEA NOT NULL,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX IF NOT EXISTS {t}_by_outcome ON {t} (batch_id, ok, line);
