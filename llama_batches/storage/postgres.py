"""PostgreSQL backend (asyncpg): records and result logs (leases in :mod:`.postgres_leases`). Their statements are
in ``sql/postgres/records.sql`` and ``results.sql``.

One connection pool per database, shared by every table opened on it. The schema is in versioned forward
migrations, ``sql/postgres/<kind>/NNNN_name.sql`` (see :mod:`.schema`): opening a store applies those it lacks, in
one transaction under an advisory lock (several processes may start at once; one migrates, the others then find
nothing to do), and records them in the table ``llama_batches_schema``. With ``auto_migrate: false`` the backend
only creates missing stores, and ``llama-batches db upgrade`` applies the rest.
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
from .postgres_leases import PostgresLeases, check_fence
from .schema import (
    Dialect,
    PostgresSchemaSession,
    StoreKind,
    StoreVersion,
    migrate_store,
    queries,
    schema_status,
    upgrade_stores,
)

__all__ = ["PostgresDatabase", "PostgresLeases", "PostgresResultLog", "PostgresTable"]

R = TypeVar("R", bound=BaseModel)

_RECORDS_SQL = queries(Dialect.postgres, "records")
_INSERT = _RECORDS_SQL["insert"]
_GET = _RECORDS_SQL["get"]
_REPLACE = _RECORDS_SQL["replace"]
_DELETE = _RECORDS_SQL["delete"]
_UPDATE = _RECORDS_SQL["update"]
_JSON_SET = _RECORDS_SQL["json_set"]
_JSON_OBJECT = _RECORDS_SQL["json_object"]
_LOCK_FOR_UPDATE = _RECORDS_SQL["lock_for_update"]
_UPDATE_DATA = _RECORDS_SQL["update_data"]
_LIST = _RECORDS_SQL["list"]
_CURSOR = _RECORDS_SQL["cursor"]
_LIST_TAGGED = _RECORDS_SQL["list_tagged"]
_UNTRANSLATABLE_CHARACTER = "22P05"

_RESULTS_SQL = queries(Dialect.postgres, "results")
_RESULTS_INSERT = _RESULTS_SQL["insert"]
_RESULTS_LINES = _RESULTS_SQL["lines"]
_RESULTS_READ = _RESULTS_SQL["read"]
_RESULTS_TOTALS = _RESULTS_SQL["totals"]
_RESULTS_DELETE = _RESULTS_SQL["delete"]


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

    @asynccontextmanager
    async def _schema(self) -> AsyncIterator[PostgresSchemaSession]:
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            session = PostgresSchemaSession(conn)
            await session.lock()
            yield session

    async def migrate(self, name: str, kind: StoreKind) -> None:
        """Create the table ``name`` of ``kind``, or apply its pending migrations, one process at a time."""
        async with self._schema() as session:
            await migrate_store(session, check_identifier(name), kind, auto=self.config.auto_migrate)

    async def schema_status(self) -> list[StoreVersion]:
        """Every store of the database, at its version."""
        async with self._schema() as session:
            return await schema_status(session)

    async def upgrade(self) -> list[StoreVersion]:
        """Apply every pending migration of every store; the stores as they were before."""
        async with self._schema() as session:
            return await upgrade_stores(session)

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a write statement; its row count."""
        pool = await self.pool()
        return _count(await pool.execute(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of a query."""
        pool = await self.pool()
        return list(await pool.fetch(sql, *args))

    async def table(self, name: str, model: type[R]) -> Table[R]:
        """The table ``name`` of ``model`` records, created (or migrated) when needed."""
        await self.migrate(name, StoreKind.records)
        return PostgresTable(self, name, model)

    async def result_log(self, name: str) -> ResultLog:
        """The result log ``name``, created (or migrated) when needed."""
        await self.migrate(name, StoreKind.results)
        return PostgresResultLog(self, name)

    async def leases(self, name: str) -> Leases:
        """The lease table ``name``, created (or migrated) when needed."""
        await self.migrate(name, StoreKind.leases)
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
