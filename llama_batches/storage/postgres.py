"""PostgreSQL backend (asyncpg): every SQL statement this backend runs is in this module (leases in
:mod:`.postgres_leases`).

One connection pool per database, shared by every table opened on it. Schema is created on first use under an
advisory lock (several processes may start at once), and columns added later are added with ``ADD COLUMN IF NOT
EXISTS``, so starting a newer version migrates an older database in place.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar, cast

import orjson
from pydantic import BaseModel

from ..api.common import Order
from ..errors import MissingExtraError
from .base import (
    Fence,
    Leases,
    Page,
    Record,
    RequestResult,
    ResultLog,
    ResultTotals,
    Stored,
    Table,
    change_paths,
    check_identifier,
    storable,
)
from .config import PostgresBackendConfig
from .postgres_leases import LEASES_SCHEMA, PostgresLeases, check_fence

__all__ = ["PostgresDatabase", "PostgresLeases", "PostgresResultLog", "PostgresTable"]

R = TypeVar("R", bound=BaseModel)

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS {t} (
        seq BIGSERIAL PRIMARY KEY,
        owner TEXT NOT NULL,
        id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        tag TEXT,
        version INTEGER NOT NULL DEFAULT 1,
        data TEXT NOT NULL,
        UNIQUE (owner, id))""",
    "CREATE INDEX IF NOT EXISTS {t}_by_time ON {t} (owner, created_at, seq)",
    "CREATE INDEX IF NOT EXISTS {t}_by_tag ON {t} (owner, tag, created_at, seq)",
    "CREATE INDEX IF NOT EXISTS {t}_by_tag_only ON {t} (tag, created_at, seq)",
]
_INSERT = "INSERT INTO {t} (owner, id, created_at, tag, data) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
_GET = "SELECT data, version FROM {t} WHERE owner = $1 AND id = $2"
_REPLACE = "UPDATE {t} SET data = $1, tag = $2, version = version + 1 WHERE owner = $3 AND id = $4 AND version = $5"
_DELETE = "DELETE FROM {t} WHERE owner = $1 AND id = $2"
_UPDATE = (
    "UPDATE {t} SET data = ({data})::text, tag = COALESCE($3::text, tag), version = version + 1 "
    "WHERE owner = $1 AND id = $2 AND ($4::text[] IS NULL OR tag = ANY($4::text[])) RETURNING data, version"
)
_JSON_SET = "jsonb_set({target}, ${path}::text[], ${value}::jsonb)"
_JSON_OBJECT = (
    "jsonb_set({target}, ${path}::text[], CASE WHEN jsonb_typeof(data::jsonb #> ${path}::text[]) = 'object' "
    "THEN data::jsonb #> ${path}::text[] ELSE '{{}}'::jsonb END)"
)
_LOCK_FOR_UPDATE = (
    "SELECT data FROM {t} WHERE owner = $1 AND id = $2 AND ($3::text[] IS NULL OR tag = ANY($3::text[])) "
    "FOR NO KEY UPDATE"
)
_UPDATE_DATA = (
    "UPDATE {t} SET data = $3, tag = COALESCE($4::text, tag), version = version + 1 WHERE owner = $1 AND id = $2 "
    "RETURNING data, version"
)
_UNTRANSLATABLE_CHARACTER = "22P05"
_LIST = (
    "SELECT data FROM {t} WHERE owner = $1 AND ($2::text IS NULL OR tag = $2) {cursor} "
    "ORDER BY created_at {direction}, seq {direction} LIMIT $3"
)
_CURSOR = "AND (created_at, seq) {cmp} (SELECT created_at, seq FROM {t} WHERE owner = $1 AND id = $4)"
_LIST_TAGGED = "SELECT owner, data, version FROM {t} WHERE tag = ANY($1::text[]) ORDER BY created_at, seq LIMIT $2"

_RESULTS_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS {t} (
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
        PRIMARY KEY (batch_id, line))""",
    "CREATE INDEX IF NOT EXISTS {t}_by_outcome ON {t} (batch_id, ok, line)",
]
_RESULTS_INSERT = (
    "INSERT INTO {t} (batch_id, line, owner, custom_id, ok, output, input_tokens, output_tokens, cached_tokens, "
    "reasoning_tokens) SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bool[], $6::bytea[], "
    "$7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) ON CONFLICT DO NOTHING"
)
_RESULTS_LINES = "SELECT line FROM {t} WHERE batch_id = $1"
_RESULTS_READ = (
    "SELECT batch_id, line, custom_id, ok, output, input_tokens, output_tokens, cached_tokens, reasoning_tokens "
    "FROM {t} WHERE batch_id = $1 AND ok = $2 AND line > $3 ORDER BY line LIMIT $4"
)
_RESULTS_TOTALS = (
    "SELECT COUNT(*) FILTER (WHERE ok), COUNT(*) FILTER (WHERE NOT ok), COALESCE(SUM(input_tokens), 0), "
    "COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(reasoning_tokens), 0) "
    "FROM {t} WHERE batch_id = $1"
)
_RESULTS_DELETE = "DELETE FROM {t} WHERE batch_id = $1"


def _jsonb_changes(changes: Mapping[str, Any], *, first: int) -> tuple[str, list[Any]]:
    """The SQL expression of ``data`` (as jsonb) with ``changes`` applied, and its arguments, numbered from
    ``first``: paths as text arrays, values as JSON text. A parent of a depth-2 path that is not an object
    (missing, null) first becomes ``{}``, as ``jsonb_set`` does not create intermediate objects."""
    paths = change_paths(changes)
    target = "data::jsonb"
    args: list[Any] = []
    for parent in dict.fromkeys(path[0] for path, _ in paths if len(path) == 2):
        args.append([parent])
        target = _JSON_OBJECT.format(target=target, path=first + len(args) - 1)
    for path, value in paths:
        args += [builtins.list(path), orjson.dumps(value).decode()]
        target = _JSON_SET.format(target=target, path=first + len(args) - 2, value=first + len(args) - 1)
    return target, args


def _apply_changes(data: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with ``changes`` set in place, as :func:`_jsonb_changes` sets them in SQL."""
    for path, value in change_paths(changes):
        target = data
        if len(path) == 2:
            if not isinstance(data.get(path[0]), dict):
                data[path[0]] = {}
            target = data[path[0]]
        target[path[-1]] = value
    return data


def _count(status: str) -> int:
    """The row count of an asyncpg command status (``INSERT 0 1``, ``UPDATE 1``)."""
    return int(status.rsplit(" ", 1)[-1])


COMMAND_TIMEOUT_S = 60.0
"""No statement of ours runs this long: one that does is stuck (a lost server), and raising frees its caller."""
_SESSION_SETTINGS = {
    # a worker paused or cut off inside a transaction must not hold its locks (a lease row) for the hours that TCP
    # takes by default to notice: the server ends the session after a minute idle in a transaction, or ~1 minute
    # of silence on the connection
    "idle_in_transaction_session_timeout": "60000",
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}


class PostgresDatabase:
    """A PostgreSQL database shared by the tables opened on it."""

    def __init__(self, config: PostgresBackendConfig) -> None:
        self.config = config
        self._pool: Any = None

    async def pool(self) -> Any:
        """The connection pool (opened on first use)."""
        if self._pool is None:
            try:
                import asyncpg
            except ImportError as exc:
                raise MissingExtraError(
                    self.config.type.value, "asyncpg", "pip install 'llama-batches[postgres]'"
                ) from exc
            self._pool = await asyncpg.create_pool(
                host=self.config.host,
                port=self.config.port,
                database=self.config.db,
                user=self.config.user,
                password=self.config.password,
                min_size=1,
                max_size=self.config.pool_size,
                command_timeout=COMMAND_TIMEOUT_S,
                server_settings=_SESSION_SETTINGS,
            )
        return self._pool

    async def migrate(self, name: str, statements: Sequence[str]) -> None:
        """Create (or update) the schema of ``name``, one process at a time."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", name)
            for statement in statements:
                await conn.execute(statement.format(t=name))

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a write statement; its row count."""
        pool = await self.pool()
        return _count(await pool.execute(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of a query."""
        pool = await self.pool()
        return list(await pool.fetch(sql, *args))

    async def table(self, name: str, model: type[R]) -> Table[R]:
        """The table ``name`` of ``model`` records, created when missing."""
        await self.migrate(check_identifier(name), _SCHEMA)
        return PostgresTable(self, name, model)

    async def result_log(self, name: str) -> ResultLog:
        """The result log ``name``, created when missing."""
        await self.migrate(check_identifier(name), _RESULTS_SCHEMA)
        return PostgresResultLog(self, name)

    async def leases(self, name: str) -> Leases:
        """The lease table ``name``, created when missing."""
        await self.migrate(check_identifier(name), LEASES_SCHEMA)
        return PostgresLeases(self, name)

    @asynccontextmanager
    async def transaction(self, fence: Fence | None = None) -> AsyncIterator[Any]:
        """A connection in a transaction, committed when the block ends, rolled back when it raises. With a
        ``fence``, it is checked first (and its lease row share-locked until the commit)."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            if fence is not None:
                await check_fence(conn, fence)
            yield conn

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class PostgresTable(Generic[R]):
    """A :class:`~llama_batches.storage.base.Table` in PostgreSQL."""

    def __init__(self, db: PostgresDatabase, name: str, model: type[R]) -> None:
        self.database = db
        self.name = name
        self._db = db
        self._model = model

    def _sql(self, template: str, **parts: str) -> str:
        return template.format(t=self.name, **parts)

    def _stored(self, row: Any) -> Stored[R] | None:
        return Stored(self._model.model_validate_json(row[0]), int(row[1])) if row is not None else None

    async def insert(self, owner: str, record: R, *, tag: str | None = None) -> bool:
        rec = cast(Record, record)
        sql = self._sql(_INSERT)
        return await self._db.execute(sql, owner, rec.id, rec.created_at, tag, record.model_dump_json()) == 1

    async def get(self, owner: str, record_id: str) -> Stored[R] | None:
        if not storable(owner, record_id):
            return None
        rows = await self._db.fetch(self._sql(_GET), owner, record_id)
        return self._stored(rows[0] if rows else None)

    async def replace(self, owner: str, record: R, *, expected_version: int, tag: str | None = None) -> bool:
        record_id = cast(Record, record).id
        if not storable(owner, record_id):
            return False
        args = (record.model_dump_json(), tag, owner, record_id, expected_version)
        return await self._db.execute(self._sql(_REPLACE), *args) == 1

    async def update(
        self,
        owner: str,
        record_id: str,
        changes: Mapping[str, Any],
        *,
        when_tags: Collection[str] | None = None,
        tag: str | None = None,
        fence: Fence | None = None,
    ) -> Stored[R] | None:
        if not storable(owner, record_id):
            return None
        tags = builtins.list(when_tags) if when_tags is not None else None
        data, values = _jsonb_changes(changes, first=5)
        try:
            row = await self._update_row(fence, self._sql(_UPDATE, data=data), owner, record_id, tag, tags, *values)
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != _UNTRANSLATABLE_CHARACTER:
                raise
            row = await self._update_in_python(owner, record_id, changes, tags, tag, fence)
        return self._stored(row)

    async def _update_row(self, fence: Fence | None, sql: str, *args: Any) -> Any:
        """Run the ``UPDATE ... RETURNING``, then check the fence in the same transaction. The record's row is
        locked before the lease's (as a claim locks them: records, then leases), so the two never deadlock."""
        if fence is None:
            return await (await self._db.pool()).fetchrow(sql, *args)
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(sql, *args)
            await check_fence(conn, fence)
            return row

    async def _update_in_python(
        self,
        owner: str,
        record_id: str,
        changes: Mapping[str, Any],
        tags: builtins.list[str] | None,
        tag: str | None,
        fence: Fence | None,
    ) -> Any:
        """The same update, merged here: jsonb cannot hold NUL (``\\u0000``), which a record's JSON text (and a
        change) can. The row is locked until the write, so it stays one atomic conditional write."""
        async with self._db.transaction() as conn:
            data = await conn.fetchval(self._sql(_LOCK_FOR_UPDATE), owner, record_id, tags)
            if fence is not None:
                await check_fence(conn, fence)
            if data is None:
                return None
            merged = orjson.dumps(_apply_changes(json.loads(data), changes)).decode()
            return await conn.fetchrow(self._sql(_UPDATE_DATA), owner, record_id, merged, tag)

    async def delete(self, owner: str, record_id: str) -> bool:
        if not storable(owner, record_id):
            return False
        return await self._db.execute(self._sql(_DELETE), owner, record_id) == 1

    async def list(
        self,
        owner: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = Order.desc,
        tag: str | None = None,
    ) -> Page[R]:
        if not storable(owner, after):
            return Page([], has_more=False)
        direction, cmp = ("DESC", "<") if order is Order.desc else ("ASC", ">")
        cursor = self._sql(_CURSOR, cmp=cmp) if after is not None else ""
        sql = self._sql(_LIST, cursor=cursor, direction=direction)
        args: tuple[Any, ...] = (owner, tag, limit + 1) + ((after,) if after is not None else ())
        rows = await self._db.fetch(sql, *args)
        items = [self._model.model_validate_json(row[0]) for row in rows[:limit]]
        return Page(items, has_more=len(rows) > limit)

    async def list_tagged(self, tags: Sequence[str], *, limit: int = 1000) -> builtins.list[tuple[str, Stored[R]]]:
        rows = await self._db.fetch(self._sql(_LIST_TAGGED), list(tags), limit)
        return [(str(row[0]), Stored(self._model.model_validate_json(row[1]), int(row[2]))) for row in rows]


class PostgresResultLog:
    """A :class:`~llama_batches.storage.base.ResultLog` in PostgreSQL: a flush is one INSERT over arrays."""

    def __init__(self, db: PostgresDatabase, name: str) -> None:
        self._db = db
        self._name = name

    async def record(self, owner: str, results: Sequence[RequestResult], *, fence: Fence | None = None) -> None:
        columns = (
            [r.batch_id for r in results], [r.line for r in results], [owner] * len(results),
            [r.custom_id for r in results], [r.ok for r in results], [r.output for r in results],
            [r.input_tokens for r in results], [r.output_tokens for r in results],
            [r.cached_tokens for r in results], [r.reasoning_tokens for r in results],
        )  # fmt: skip
        if fence is None:
            if results:
                await self._db.execute(_RESULTS_INSERT.format(t=self._name), *columns)
            return
        async with self._db.transaction(fence) as conn:
            await conn.execute(_RESULTS_INSERT.format(t=self._name), *columns)

    async def done_lines(self, batch_id: str) -> set[int]:
        return {int(row[0]) for row in await self._db.fetch(_RESULTS_LINES.format(t=self._name), batch_id)}

    async def read(self, batch_id: str, *, ok: bool, after_line: int = 0, limit: int = 1000) -> list[RequestResult]:
        rows = await self._db.fetch(_RESULTS_READ.format(t=self._name), batch_id, ok, after_line, limit)
        return [
            RequestResult(str(r[0]), int(r[1]), str(r[2]), bool(r[3]), bytes(r[4]), *map(int, r[5:9])) for r in rows
        ]

    async def totals(self, batch_id: str) -> ResultTotals:
        rows = await self._db.fetch(_RESULTS_TOTALS.format(t=self._name), batch_id)
        return ResultTotals(*(int(v) for v in rows[0])) if rows else ResultTotals()

    async def delete(self, batch_id: str) -> None:
        await self._db.execute(_RESULTS_DELETE.format(t=self._name), batch_id)
