"""SQLite backend (aiosqlite): every SQL statement this backend runs is in this module.

One connection per database file, in autocommit mode with WAL journaling and ``synchronous=NORMAL``: each
statement is atomic, readers never block the writer, and a commit costs no fsync (WAL is synced at checkpoints).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import aiosqlite
from pydantic import BaseModel

from ..api.common import Order
from .base import Page, Record, Stored, Table, check_identifier

__all__ = ["SqliteDatabase", "SqliteTable"]

R = TypeVar("R", bound=BaseModel)

_SCHEMA = """
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
"""

_INSERT = "INSERT INTO {t} (owner, id, created_at, tag, data) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
_GET = "SELECT data, version FROM {t} WHERE owner = ? AND id = ?"
_REPLACE = "UPDATE {t} SET data = ?, tag = ?, version = version + 1 WHERE owner = ? AND id = ? AND version = ?"
_DELETE = "DELETE FROM {t} WHERE owner = ? AND id = ?"
_LIST = (
    "SELECT data FROM {t} WHERE owner = ? AND (? IS NULL OR tag = ?) {cursor} "
    "ORDER BY created_at {direction}, seq {direction} LIMIT ?"
)
_CURSOR = "AND (created_at, seq) {cmp} (SELECT created_at, seq FROM {t} WHERE owner = ? AND id = ?)"


def _identity(record: BaseModel) -> tuple[str, int]:
    rec = cast(Record, record)
    return rec.id, rec.created_at


class SqliteDatabase:
    """A SQLite database file shared by the tables opened on it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

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

    async def table(self, name: str, model: type[R]) -> Table[R]:
        """The table ``name`` of ``model`` records, created when missing."""
        table = SqliteTable(self, check_identifier(name), model)
        await table.create()
        return table

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


class SqliteTable(Generic[R]):
    """A :class:`~llama_batches.storage.base.Table` in a SQLite database."""

    def __init__(self, db: SqliteDatabase, name: str, model: type[R]) -> None:
        self._db = db
        self._name = name
        self._model = model

    def _sql(self, template: str, **parts: str) -> str:
        return template.format(t=self._name, **parts)

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        conn = await self._db.connection()
        async with conn.execute(sql, params) as cursor:
            return cursor.rowcount

    async def create(self) -> None:
        """Create the table and its indexes when missing."""
        conn = await self._db.connection()
        await conn.executescript(self._sql(_SCHEMA))

    async def insert(self, owner: str, record: R, *, tag: str | None = None) -> bool:
        record_id, created_at = _identity(record)
        params = (owner, record_id, created_at, tag, record.model_dump_json())
        return await self._execute(self._sql(_INSERT), params) == 1

    async def get(self, owner: str, record_id: str) -> Stored[R] | None:
        conn = await self._db.connection()
        async with conn.execute(self._sql(_GET), (owner, record_id)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return Stored(self._model.model_validate_json(row[0]), int(row[1]))

    async def replace(self, owner: str, record: R, *, expected_version: int, tag: str | None = None) -> bool:
        record_id, _ = _identity(record)
        params = (record.model_dump_json(), tag, owner, record_id, expected_version)
        return await self._execute(self._sql(_REPLACE), params) == 1

    async def delete(self, owner: str, record_id: str) -> bool:
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
        direction, cmp = ("DESC", "<") if order is Order.desc else ("ASC", ">")
        cursor_sql = self._sql(_CURSOR, cmp=cmp) if after is not None else ""
        params: tuple[Any, ...] = (owner, tag, tag)
        if after is not None:
            params += (owner, after)
        sql = self._sql(_LIST, cursor=cursor_sql, direction=direction)
        conn = await self._db.connection()
        async with conn.execute(sql, (*params, limit + 1)) as cursor:
            rows = list(await cursor.fetchall())
        items = [self._model.model_validate_json(row[0]) for row in rows[:limit]]
        return Page(items, has_more=len(rows) > limit)
