-- The statements of the postgres backend on records; {t} is the table's name (other {...} are filled in
-- by the code). Loaded by llama_batches.storage.schema.queries: a statement follows its `-- name:` line.

-- name: insert
INSERT INTO {t} (owner, id, created_at, tag, data)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT DO NOTHING

-- name: get
SELECT data, version
    FROM {t}
    WHERE owner = $1 AND id = $2

-- name: replace
UPDATE {t}
    SET data = $1, tag = $2, version = version + 1
    WHERE owner = $3 AND id = $4 AND version = $5

-- name: delete
DELETE
    FROM {t}
    WHERE owner = $1 AND id = $2

-- name: update
UPDATE {t}
    SET data = ({data})::text, tag = COALESCE($3::text, tag), version = version + 1
    WHERE owner = $1 AND id = $2 AND ($4::text[] IS NULL OR tag = ANY($4::text[]))
    RETURNING data, version

-- name: json_set
jsonb_set({target}, ${path}::text[], ${value}::jsonb)

-- name: json_object
-- {{}} is a literal {} once the code has filled in the placeholders
jsonb_set({target}, ${path}::text[], CASE WHEN jsonb_typeof(data::jsonb #> ${path}::text[]) = 'object' THEN
        data::jsonb #> ${path}::text[] ELSE '{{}}'::jsonb END)

-- name: lock_for_update
SELECT data
    FROM {t}
    WHERE owner = $1 AND id = $2 AND ($3::text[] IS NULL OR tag = ANY($3::text[]))
    FOR NO KEY UPDATE

-- name: update_data
UPDATE {t}
    SET data = $3, tag = COALESCE($4::text, tag), version = version + 1
    WHERE owner = $1 AND id = $2
    RETURNING data, version

-- name: list
SELECT data
    FROM {t}
    WHERE owner = $1 AND ($2::text IS NULL OR tag = $2) {cursor}
    ORDER BY created_at {direction}, seq {direction}
    LIMIT $3

-- name: cursor
AND (created_at, seq) {cmp} (SELECT created_at, seq FROM {t} WHERE owner = $1 AND id = $4)

-- name: list_tagged
SELECT owner, data, version
    FROM {t}
    WHERE tag = ANY($1::text[])
    ORDER BY created_at, seq
    LIMIT $2
