"""Read llama-stack's tables, a page at a time, on SQLite (aiosqlite, read-only) or PostgreSQL (asyncpg).

Every read is one short query by key order (keyset pagination): no transaction is held open between pages, so the
import can write into the same database file meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import aiosqlite

from ..errors import LlamaBatchesError, MissingExtraError
from .source import Database, PostgresDatabase, SqliteDatabase

__all__ = ["FileRow", "MigrationError", "Readers", "SourceReader", "open_reader"]


class MigrationError(LlamaBatchesError):
    """The llama-stack deployment could not be read or imported."""


@dataclass(frozen=True)
class FileRow:
    """A row of llama-stack's ``openai_files``."""

    id: str
    filename: str | None
    purpose: str | None
    bytes: int | None
    created_at: int | None
    expires_at: int | None
    file_path: str | None
    owner_principal: str | None
    access_attributes: str | None
    """As stored: JSON text (``null`` when the row has none)."""


_FILE_COLUMNS = "id, filename, purpose, bytes, created_at, expires_at, file_path, owner_principal, access_attributes"
_SQLITE = {
    "kv": "SELECT key, value FROM {t} WHERE key >= ? AND key < ? AND key > ? ORDER BY key LIMIT ?",
    "files": f"SELECT {_FILE_COLUMNS} FROM {{t}} WHERE id > ? ORDER BY id LIMIT ?",
}
_POSTGRES = {
    "kv": "SELECT key, value FROM {t} WHERE starts_with(key, $1) AND key > $2 ORDER BY key LIMIT $3",
    "files": f"SELECT {_FILE_COLUMNS} FROM {{t}} WHERE id > $1 ORDER BY id LIMIT $2",
    "owners": "SELECT id, owner_principal FROM {t} WHERE id = ANY($1::text[])",
}


class SourceReader(Protocol):
    """Pages of one llama-stack database."""

    @property
    def database(self) -> Database:
        """The database read."""
        ...

    async def kv_page(self, table: str, prefix: str, after: str, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` (key, value) pairs of ``table`` whose key starts with ``prefix``, after ``after``."""
        ...

    async def file_page(self, table: str, after: str, limit: int) -> list[FileRow]:
        """Up to ``limit`` rows of the files table ``table`` whose id is after ``after``, by id."""
        ...

    async def file_owners(self, table: str, ids: Sequence[str]) -> dict[str, str | None]:
        """``owner_principal`` of the files ``ids`` (those that exist), in one query."""
        ...

    async def close(self) -> None:
        """Close the connection."""
        ...


def _file_row(row: Sequence[Any]) -> FileRow:
    attributes = row[8]
    return FileRow(
        id=str(row[0]),
        filename=row[1],
        purpose=row[2],
        bytes=row[3],
        created_at=row[4],
        expires_at=row[5],
        file_path=row[6],
        owner_principal=row[7],
        access_attributes=None if attributes is None else str(attributes),
    )


def _next_prefix(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class _SqliteReader:
    def __init__(self, database: SqliteDatabase, conn: aiosqlite.Connection) -> None:
        self.database = database
        self._conn = conn

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            async with self._conn.execute(sql, args) as cursor:
                return list(await cursor.fetchall())
        except aiosqlite.Error as exc:
            raise MigrationError(f"cannot read llama-stack's SQLite database {self.database}: {exc}") from exc

    async def kv_page(self, table: str, prefix: str, after: str, limit: int) -> list[tuple[str, str]]:
        sql = _SQLITE["kv"].format(t=table)
        return [(str(k), str(v)) for k, v in await self._fetch(sql, prefix, _next_prefix(prefix), after, limit)]

    async def file_page(self, table: str, after: str, limit: int) -> list[FileRow]:
        return [_file_row(row) for row in await self._fetch(_SQLITE["files"].format(t=table), after, limit)]

    async def file_owners(self, table: str, ids: Sequence[str]) -> dict[str, str | None]:
        if not ids:
            return {}
        sql = f"SELECT id, owner_principal FROM {table} WHERE id IN ({', '.join('?' * len(ids))})"
        return {str(i): owner for i, owner in await self._fetch(sql, *ids)}

    async def close(self) -> None:
        await self._conn.close()


class _PostgresReader:
    def __init__(self, database: PostgresDatabase, conn: Any) -> None:
        self.database = database
        self._conn = conn

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        try:
            return list(await self._conn.fetch(sql, *args))
        except (asyncpg.PostgresError, OSError) as exc:
            raise MigrationError(f"cannot read llama-stack's PostgreSQL database {self.database}: {exc}") from exc

    async def kv_page(self, table: str, prefix: str, after: str, limit: int) -> list[tuple[str, str]]:
        rows = await self._fetch(_POSTGRES["kv"].format(t=table), prefix, after, limit)
        return [(str(row[0]), str(row[1])) for row in rows]

    async def file_page(self, table: str, after: str, limit: int) -> list[FileRow]:
        return [_file_row(tuple(row)) for row in await self._fetch(_POSTGRES["files"].format(t=table), after, limit)]

    async def file_owners(self, table: str, ids: Sequence[str]) -> dict[str, str | None]:
        rows = await self._fetch(_POSTGRES["owners"].format(t=table), list(ids)) if ids else []
        return {str(row[0]): row[1] for row in rows}

    async def close(self) -> None:
        await self._conn.close()


async def _open_sqlite(database: SqliteDatabase) -> SourceReader:
    if not database.path.is_file():
        raise MigrationError(f"llama-stack's SQLite database {database} does not exist")
    try:
        conn = await aiosqlite.connect(f"{database.path.resolve().as_uri()}?mode=ro", uri=True)
    except aiosqlite.Error as exc:
        raise MigrationError(f"cannot open llama-stack's SQLite database {database}: {exc}") from exc
    return _SqliteReader(database, conn)


async def _open_postgres(database: PostgresDatabase) -> SourceReader:
    try:
        import asyncpg
    except ImportError:
        hint = "pip install 'llama-batches[postgres]'"
        raise MissingExtraError("import-llama-stack", "asyncpg", hint) from None
    ssl: Any = database.ssl_mode
    try:
        conn = await asyncpg.connect(
            host=database.host,
            port=database.port,
            user=database.user,
            password=database.password,
            database=database.db,
            ssl=ssl,
            timeout=10,
        )
    except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
        raise MigrationError(f"cannot connect to llama-stack's PostgreSQL database {database}: {exc}") from exc
    return _PostgresReader(database, conn)


async def open_reader(database: Database) -> SourceReader:
    """A reader on ``database``; MigrationError when it cannot be opened."""
    if isinstance(database, SqliteDatabase):
        return await _open_sqlite(database)
    return await _open_postgres(database)


class Readers:
    """One reader per llama-stack database, opened on first use and closed together."""

    def __init__(self) -> None:
        self._open: dict[Database, SourceReader] = {}

    async def get(self, database: Database) -> SourceReader:
        """The reader of ``database``."""
        if database not in self._open:
            self._open[database] = await open_reader(database)
        return self._open[database]

    async def __aenter__(self) -> Readers:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for reader in self._open.values():
            await reader.close()
        self._open.clear()
