-- The statements of the sqlite backend on records; {t} is the table's name (other {...} are filled in
-- by the code). Loaded by llama_batches.storage.schema.queries: a statement follows its `-- name:` line.

-- name: insert
INSERT INTO {t} (owner, id, created_at, tag, data)
    VALUES (?, ?, ?, ?, ?)
    ON CONFLICT DO NOTHING

-- name: get
SELECT data, version
    FROM {t}
    WHERE owner = ? AND id = ?

-- name: replace
UPDATE {t}
    SET data = ?, tag = ?, version = version + 1
    WHERE owner = ? AND id = ? AND version = ?

-- name: delete
DELETE
    FROM {t}
    WHERE owner = ? AND id = ?

-- name: update
UPDATE {t}
    SET data = {data}, tag = COALESCE(?, tag), version = version + 1
    WHERE owner = ? AND id = ? {when}
    RETURNING data, version

-- name: update_when_tags
AND tag IN ({marks})

-- name: json_set
json_set({target}, {pairs})

-- name: json_pair
?, json(?)

-- name: json_object_pair
?, json(CASE WHEN json_type(data, ?) = 'object' THEN json_extract(data, ?) ELSE '{}' END)

-- name: list
SELECT data
    FROM {t}
    WHERE owner = ? AND (? IS NULL OR tag = ?) {cursor}
    ORDER BY created_at {direction}, seq {direction}
    LIMIT ?

-- name: cursor
AND (created_at, seq) {cmp} (SELECT created_at, seq FROM {t} WHERE owner = ? AND id = ?)

-- name: list_tagged
SELECT owner, data, version
    FROM {t}
    WHERE tag IN ({marks})
    ORDER BY created_at, seq
    LIMIT ?
