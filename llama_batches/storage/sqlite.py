"""SQLite backend (aiosqlite): records and result logs (leases in :mod:`.sqlite_leases`). Their statements are in
``sql/sqlite/records.sql`` and ``results.sql``; the schema is in versioned migrations,
``sql/sqlite/<kind>/NNNN_name.sql``, applied when a store is opened (see :mod:`.schema`).

One connection per database file, in autocommit mode with WAL journaling and ``synchronous=NORMAL``: each
statement is atomic, readers never block the writer, and a commit costs no fsync (WAL is synced at checkpoints).
Writes that must check something first (a fence) run in ``BEGIN IMMEDIATE`` transactions, which take the file's
write lock at once, so the check and the write are atomic even when several processes share the file.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import aiosqlite
import orjson
from pydantic import BaseModel

from ..api.common import Order
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
from .schema import (
    Dialect,
    SqliteSchemaSession,
    StoreKind,
    StoreVersion,
    migrate_store,
    queries,
    schema_status,
    upgrade_stores,
)
from .sqlite_leases import SqliteLeases, check_fence

__all__ = ["SqliteDatabase", "SqliteLeases", "SqliteResultLog", "SqliteTable"]

R = TypeVar("R", bound=BaseModel)

_RECORDS_SQL = queries(Dialect.sqlite, "records")
_INSERT = _RECORDS_SQL["insert"]
_GET = _RECORDS_SQL["get"]
_REPLACE = _RECORDS_SQL["replace"]
_DELETE = _RECORDS_SQL["delete"]
_UPDATE = _RECORDS_SQL["update"]
_UPDATE_WHEN_TAGS = _RECORDS_SQL["update_when_tags"]
_JSON_SET = _RECORDS_SQL["json_set"]
_JSON_PAIR = _RECORDS_SQL["json_pair"]
_JSON_OBJECT_PAIR = _RECORDS_SQL["json_object_pair"]
_LIST = _RECORDS_SQL["list"]
_CURSOR = _RECORDS_SQL["cursor"]
_LIST_TAGGED = _RECORDS_SQL["list_tagged"]

_RESULTS_SQL = queries(Dialect.sqlite, "results")
_RESULTS_INSERT = _RESULTS_SQL["insert"]
_RESULTS_LINES = _RESULTS_SQL["lines"]
_RESULTS_READ = _RESULTS_SQL["read"]
_RESULTS_TOTALS = _RESULTS_SQL["totals"]
_RESULTS_DELETE = _RESULTS_SQL["delete"]


def _identity(record: BaseModel) -> tuple[str, int]:
    rec = cast(Record, record)
    return rec.id, rec.created_at


def _json_changes(changes: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The SQL expression of ``data`` with ``changes`` applied, and its parameters (JSON paths, values as JSON
    text). A parent of a depth-2 path that is not an object (missing, null) first becomes ``{}``, in an inner
    ``json_set``: a single ``json_set`` does not see its own earlier edits."""
    paths = change_paths(changes)
    if not paths:
        return "data", ()
    target = "data"
    params: tuple[Any, ...] = ()
    parents = list(dict.fromkeys(path[0] for path, _ in paths if len(path) == 2))
    if parents:
        target = _JSON_SET.format(target=target, pairs=", ".join([_JSON_OBJECT_PAIR] * len(parents)))
        params = tuple(item for parent in parents for item in (f"$.{parent}",) * 3)
    pairs = ", ".join([_JSON_PAIR] * len(paths))
    values = tuple(item for path, value in paths for item in ("$." + ".".join(path), orjson.dumps(value).decode()))
    return _JSON_SET.format(target=target, pairs=pairs), params + values


class SqliteDatabase:
    """A SQLite database file shared by the tables opened on it."""

    def __init__(self, path: str | Path, *, auto_migrate: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.auto_migrate = auto_migrate
        """Whether opening a store applies its pending migrations (else only a missing store is created)."""
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self.write_lock = asyncio.Lock()
        """Held by every write, so that a multi-statement transaction never takes in another task's write."""

    async def connection(self) -> aiosqlite.Connection:
        """The open connection (opened on first use)."""
        async with self._lock:
            if self._conn is None:
                if str(self.path) != ":memory:":
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = await aiosqlite.connect(self.path, isolation_level=None)
                await conn.execute("PRAGMA journal_mode=WAL")
                await conn.execute("PRAGMA synchronous=NORMAL")
                await conn.execute("PRAGMA busy_timeout=10000")
                self._conn = conn
            return self._conn

    async def migrate(self, name: str, kind: StoreKind) -> None:
        """Create the table ``name`` of ``kind``, or apply its pending migrations (see :mod:`.schema`)."""
        async with self.transaction() as conn:
            await migrate_store(SqliteSchemaSession(conn), check_identifier(name), kind, auto=self.auto_migrate)

    async def schema_status(self) -> list[StoreVersion]:
        """Every store of the database, at its version."""
        async with self.transaction() as conn:
            return await schema_status(SqliteSchemaSession(conn))

    async def upgrade(self) -> list[StoreVersion]:
        """Apply every pending migration of every store; the stores as they were before."""
        async with self.transaction() as conn:
            return await upgrade_stores(SqliteSchemaSession(conn))

    async def table(self, name: str, model: type[R]) -> Table[R]:
        """The table ``name`` of ``model`` records, created (or migrated) when needed."""
        await self.migrate(name, StoreKind.records)
        return SqliteTable(self, name, model)

    async def result_log(self, name: str) -> ResultLog:
        """The result log ``name``, created (or migrated) when needed."""
        await self.migrate(name, StoreKind.results)
        return SqliteResultLog(self, name)

    async def leases(self, name: str) -> Leases:
        """The lease table ``name``, created (or migrated) when needed."""
        await self.migrate(name, StoreKind.leases)
        return SqliteLeases(self, name)

    async def write(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one write statement; its row count."""
        conn = await self.connection()
        async with self.write_lock, conn.execute(sql, params) as cursor:
            return cursor.rowcount

    async def write_returning(self, sql: str, params: tuple[Any, ...], fence: Fence | None) -> list[Any]:
        """Run one write statement with a ``RETURNING`` clause; its rows. With a ``fence``, in a transaction
        that checks it first (raising :class:`~llama_batches.storage.base.LeaseLost`, nothing written)."""
        if fence is not None:
            async with self.transaction(fence) as conn, conn.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        conn = await self.connection()
        async with self.write_lock, conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    @asynccontextmanager
    async def transaction(self, fence: Fence | None = None) -> AsyncIterator[aiosqlite.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction holding the write lock (of this object and of the file: other
        processes wait), committed when the block ends, rolled back when it raises. With a ``fence``, it first
        checks it, so a fenced write commits only while its lease is at its epoch. The connection runs statements
        in order even when their caller is cancelled, so the ROLLBACK is queued even after a cancelled BEGIN (and
        fails harmlessly when the BEGIN itself failed)."""
        conn = await self.connection()
        async with self.write_lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
                if fence is not None:
                    await check_fence(conn, fence)
                yield conn
                await conn.execute("COMMIT")  # inside: a failed COMMIT must not leave the transaction open
            except BaseException:
                with suppress(sqlite3.OperationalError):
                    await conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


class SqliteTable(Generic[R]):
    """A :class:`~llama_batches.storage.base.Table` in a SQLite database."""

    def __init__(self, db: SqliteDatabase, name: str, model: type[R]) -> None:
        self.database = db
        self.name = name
        self._db = db
        self._model = model

    def _sql(self, template: str, **parts: str) -> str:
        return template.format(t=self.name, **parts)

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        return await self._db.write(sql, params)

    async def insert(self, owner: str, record: R, *, tag: str | None = None) -> bool:
        record_id, created_at = _identity(record)
        params = (owner, record_id, created_at, tag, record.model_dump_json())
        return await self._execute(self._sql(_INSERT), params) == 1

    async def get(self, owner: str, record_id: str) -> Stored[R] | None:
        if not storable(owner, record_id):
            return None
        conn = await self._db.connection()
        async with conn.execute(self._sql(_GET), (owner, record_id)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return Stored(self._model.model_validate_json(row[0]), int(row[1]))

    async def replace(self, owner: str, record: R, *, expected_version: int, tag: str | None = None) -> bool:
        record_id, _ = _identity(record)
        if not storable(owner, record_id):
            return False
        params = (record.model_dump_json(), tag, owner, record_id, expected_version)
        return await self._execute(self._sql(_REPLACE), params) == 1

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
        data, params = _json_changes(changes)
        when = ""
        if when_tags is not None:
            when = self._sql(_UPDATE_WHEN_TAGS, marks=", ".join("?" * len(when_tags)))
        params += (tag, owner, record_id, *(when_tags or ()))
        rows = await self._db.write_returning(self._sql(_UPDATE, data=data, when=when), params, fence)
        return Stored(self._model.model_validate_json(rows[0][0]), int(rows[0][1])) if rows else None

    async def delete(self, owner: str, record_id: str) -> bool:
        if not storable(owner, record_id):
            return False
        return await self._execute(self._sql(_DELETE), (owner, record_id)) == 1

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
        sql, params = self.list_statement(owner, after=after, limit=limit, order=order, tag=tag)
        conn = await self._db.connection()
        async with conn.execute(sql, params) as cursor:
            rows = list(await cursor.fetchall())
        items = [self._model.model_validate_json(row[0]) for row in rows[:limit]]
        return Page(items, has_more=len(rows) > limit)

    def list_statement(
        self, owner: str, *, after: str | None, limit: int, order: Order, tag: str | None
    ) -> tuple[str, tuple[Any, ...]]:
        """The statement that :meth:`list` runs, and its parameters (one row more than ``limit``: is there more?)."""
        direction, cmp = ("DESC", "<") if order is Order.desc else ("ASC", ">")
        cursor_sql = self._sql(_CURSOR, cmp=cmp) if after is not None else ""
        params: tuple[Any, ...] = (owner, tag, tag)
        if after is not None:
            params += (owner, after)
        return self._sql(_LIST, cursor=cursor_sql, direction=direction), (*params, limit + 1)

    async def list_tagged(self, tags: Sequence[str], *, limit: int = 1000) -> builtins.list[tuple[str, Stored[R]]]:
        if not tags:
            return []
        sql = self._sql(_LIST_TAGGED, marks=", ".join("?" * len(tags)))
        conn = await self._db.connection()
        async with conn.execute(sql, (*tags, limit)) as cursor:
            rows = list(await cursor.fetchall())
        return [(str(row[0]), Stored(self._model.model_validate_json(row[1]), int(row[2]))) for row in rows]


def _result(row: Any) -> RequestResult:
    return RequestResult(str(row[0]), int(row[1]), str(row[2]), bool(row[3]), bytes(row[4]), *map(int, row[5:9]))


class SqliteResultLog:
    """A :class:`~llama_batches.storage.base.ResultLog` in a SQLite database: one row per finished request."""

    def __init__(self, db: SqliteDatabase, name: str) -> None:
        self._db = db
        self._name = name

    def _sql(self, template: str) -> str:
        return template.format(t=self._name)

    async def record(self, owner: str, results: Sequence[RequestResult], *, fence: Fence | None = None) -> None:
        rows = [
            (r.batch_id, r.line, owner, r.custom_id, int(r.ok), r.output, r.input_tokens, r.output_tokens,
             r.cached_tokens, r.reasoning_tokens)
            for r in results
        ]  # fmt: skip
        if rows or fence is not None:
            async with self._db.transaction(fence) as conn:
                await conn.executemany(self._sql(_RESULTS_INSERT), rows)

    async def done_lines(self, batch_id: str) -> set[int]:
        conn = await self._db.connection()
        async with conn.execute(self._sql(_RESULTS_LINES), (batch_id,)) as cursor:
            return {int(row[0]) for row in await cursor.fetchall()}

    async def read(self, batch_id: str, *, ok: bool, after_line: int = 0, limit: int = 1000) -> list[RequestResult]:
        conn = await self._db.connection()
        async with conn.execute(self._sql(_RESULTS_READ), (batch_id, int(ok), after_line, limit)) as cursor:
            return [_result(row) for row in await cursor.fetchall()]

    async def totals(self, batch_id: str) -> ResultTotals:
        conn = await self._db.connection()
        async with conn.execute(self._sql(_RESULTS_TOTALS), (batch_id,)) as cursor:
            row = await cursor.fetchone()
        return ResultTotals(*(int(v) for v in row)) if row is not None else ResultTotals()

    async def delete(self, batch_id: str) -> None:
        await self._db.write(self._sql(_RESULTS_DELETE), (batch_id,))
