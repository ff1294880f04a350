"""Versioned forward migrations of the stores' tables, one set of ``.sql`` files per dialect.

A *store* is one table a provider opens (``batches``, ``requests``, ``leases``, ``files_metadata``...), named from
config (:func:`~llama_batches.storage.backends.table_name`), of one *kind*: records, a result log or leases. Each
kind has numbered migrations in ``sql/<dialect>/<kind>/NNNN_name.sql`` (``{t}`` stands for the table's name), and
the table ``llama_batches_schema`` of each database records every migration applied to every store, so each store
is at a version of its own::

    store            kind     version  name     applied_at
    batches_batches  records  1        initial  2026-12-02 12:00:00

Opening a store applies its pending migrations in one transaction that holds the database's schema lock
(PostgreSQL: ``pg_advisory_xact_lock``; SQLite: ``BEGIN IMMEDIATE``), so processes starting together migrate it
once. A store whose version is newer than this release knows is an error (:class:`SchemaTooNewError`), and so is
a store behind when the backend has ``auto_migrate: false`` (:class:`SchemaOutdatedError`): an operator then runs
``llama-batches db upgrade``. A table written before versioning (it exists, with no row here) is adopted: brought
to the shape of migration 1, which creates nothing it already has, then versioned like any other.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any, Protocol

import aiosqlite

from ..errors import StackError
from .base import check_identifier

__all__ = [
    "VERSION_TABLE",
    "Dialect",
    "Migration",
    "PostgresSchemaSession",
    "SchemaOutdatedError",
    "SchemaSession",
    "SchemaTooNewError",
    "SchemaVersionError",
    "SqliteSchemaSession",
    "StoreKind",
    "StoreVersion",
    "latest_version",
    "migrate_store",
    "migrations",
    "queries",
    "schema_status",
    "split_script",
    "upgrade_stores",
]

VERSION_TABLE = "llama_batches_schema"


class Dialect(StrEnum):
    """The SQL dialects with a set of ``.sql`` files."""

    sqlite = "sqlite"
    postgres = "postgres"


class StoreKind(StrEnum):
    """What a store's table holds."""

    records = "records"
    results = "results"
    leases = "leases"


# the columns that identify a table written before versioning, by kind
_SIGNATURES = {
    StoreKind.records: frozenset({"seq", "owner", "id", "created_at", "tag", "version", "data"}),
    StoreKind.results: frozenset({"batch_id", "line", "owner", "custom_id", "ok", "output"}),
    StoreKind.leases: frozenset({"key", "holder", "expires_at"}),
}
# columns that unversioned tables of an earlier layout may lack, added when such a table is adopted
_ADOPTED_COLUMNS = {StoreKind.leases: ("epoch", "failures")}
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_QUERY_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


class SchemaVersionError(StackError):
    """A store's schema version does not fit this release."""

    def __init__(self, store: str, kind: StoreKind, found: int, latest: int, problem: str) -> None:
        self.store = store
        self.kind = kind
        self.found = found
        self.latest = latest
        super().__init__(f"table '{store}' ({kind.value}) {problem}")


class SchemaTooNewError(SchemaVersionError):
    """A store was migrated by a newer release than this one."""

    def __init__(self, store: str, kind: StoreKind, found: int, latest: int) -> None:
        problem = (
            f"is at schema version {found}, newer than this release knows ({latest}): "
            "run the release that migrated it, or a newer one"
        )
        super().__init__(store, kind, found, latest, problem)


class SchemaOutdatedError(SchemaVersionError):
    """A store needs migrations, and its backend does not migrate at start (``auto_migrate: false``)."""

    def __init__(self, store: str, kind: StoreKind, found: int, latest: int) -> None:
        problem = (
            f"is at schema version {found}, this release needs {latest}, and the backend has auto_migrate: false: "
            "run 'llama-batches db upgrade' with this config"
        )
        super().__init__(store, kind, found, latest, problem)


@dataclass(frozen=True)
class Migration:
    """One forward migration of a kind of store."""

    version: int
    name: str
    sql: str

    def for_table(self, table: str) -> str:
        """The migration's SQL for the table ``table``."""
        return self.sql.replace("{t}", check_identifier(table))


@dataclass(frozen=True)
class StoreVersion:
    """Where a store's schema is (0: written before versioning) and where this release would take it."""

    store: str
    kind: StoreKind
    version: int
    latest: int

    @property
    def pending(self) -> int:
        """How many migrations this release would apply."""
        return max(self.latest - self.version, 0)


def _directory(dialect: Dialect) -> Any:
    return resources.files(__package__) / "sql" / dialect.value


@cache
def migrations(dialect: Dialect, kind: StoreKind) -> tuple[Migration, ...]:
    """The migrations of ``kind`` in ``dialect``, numbered 1, 2, ... in order."""
    found: list[Migration] = []
    for entry in (_directory(dialect) / kind.value).iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    if [migration.version for migration in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"the {dialect.value} {kind.value} migrations are not numbered 1..n: {found}")
    return tuple(found)


def latest_version(dialect: Dialect, kind: StoreKind) -> int:
    """The version a store of ``kind`` has once migrated by this release."""
    return len(migrations(dialect, kind))


@cache
def queries(dialect: Dialect, file: str) -> Mapping[str, str]:
    """The named statements (or parts of statements) of ``sql/<dialect>/<file>.sql``: each follows a ``-- name:
    <name>`` line, and is returned on one line, without its comment lines (so that a part never comments out the
    rest of the statement it goes into)."""
    text = (_directory(dialect) / f"{file}.sql").read_text(encoding="utf-8")
    parts = _QUERY_NAME.split(text)[1:]
    return {name: _one_line(sql) for name, sql in zip(parts[::2], parts[1::2], strict=True)}


def _one_line(sql: str) -> str:
    return " ".join(line.strip() for line in sql.splitlines() if line.strip() and not line.lstrip().startswith("--"))


def split_script(script: str) -> list[str]:
    """The statements of a SQL script (comment lines dropped), for a driver that runs one at a time."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


class SchemaSession(Protocol):
    """A connection inside a transaction that holds the database's schema lock."""

    dialect: Dialect

    async def run(self, sql: str, *args: Any) -> None:
        """Run a statement (with ``args``) or a script (without)."""
        ...

    async def rows(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        """The rows of a query."""
        ...


class SqliteSchemaSession:
    """A :class:`SchemaSession` on an aiosqlite connection in a ``BEGIN IMMEDIATE`` transaction."""

    dialect = Dialect.sqlite

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def run(self, sql: str, *args: Any) -> None:
        # executescript would COMMIT first: run the statements one by one, inside the transaction
        for statement in split_script(sql) if not args else [sql]:
            await self._conn.execute(statement, args)

    async def rows(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        async with self._conn.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]


class PostgresSchemaSession:
    """A :class:`SchemaSession` on an asyncpg connection in a transaction (the lock is taken by :meth:`lock`)."""

    dialect = Dialect.postgres

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def lock(self) -> None:
        """Take the schema lock until the transaction ends; any other process migrating waits for it."""
        await self._conn.execute(queries(Dialect.postgres, "schema")["lock"])

    async def run(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def rows(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return [tuple(row) for row in await self._conn.fetch(sql, *args)]


async def _recorded(session: SchemaSession, store: str) -> tuple[StoreKind, int] | None:
    rows = await session.rows(queries(session.dialect, "schema")["store_version"], store)
    return (StoreKind(rows[0][0]), int(rows[0][1])) if rows else None


async def _columns(session: SchemaSession) -> dict[str, set[str]]:
    """The columns of every table of the database, by table name (lower case)."""
    tables: dict[str, set[str]] = {}
    for table, column in await session.rows(queries(session.dialect, "schema")["columns"]):
        tables.setdefault(str(table).lower(), set()).add(str(column))
    return tables


async def _adopt(session: SchemaSession, store: str, kind: StoreKind) -> None:
    """Bring a table written before versioning to the shape of migration 1 (add the columns it may lack)."""
    missing = [c for c in _ADOPTED_COLUMNS.get(kind, ()) if c not in (await _columns(session)).get(store.lower(), ())]
    add = queries(session.dialect, "schema")["add_lease_column"]
    for column in missing:
        await session.run(add.replace("{t}", check_identifier(store)).replace("{column}", column))


async def migrate_store(session: SchemaSession, store: str, kind: StoreKind, *, auto: bool = True) -> int:
    """Apply the pending migrations of ``store`` (creating it when missing); how many were applied. Without
    ``auto``, only a missing store is created: one that is behind raises :class:`SchemaOutdatedError`."""
    schema = queries(session.dialect, "schema")
    await session.run(schema["create_versions"])
    recorded = await _recorded(session, store)
    latest = latest_version(session.dialect, kind)
    if recorded is not None and recorded[0] is not kind:
        raise SchemaVersionError(store, kind, recorded[1], latest, f"holds {recorded[0].value}, not {kind.value}")
    current = recorded[1] if recorded is not None else 0
    if current > latest:
        raise SchemaTooNewError(store, kind, current, latest)
    if current == latest:
        return 0
    exists = bool(await session.rows(schema["table_exists"], store))
    if exists and not auto:
        raise SchemaOutdatedError(store, kind, current, latest)
    if exists and current == 0:
        await _adopt(session, store, kind)
    for migration in migrations(session.dialect, kind)[current:]:
        await session.run(migration.for_table(store))
        await session.run(schema["record_version"], store, kind.value, migration.version, migration.name)
    return latest - current


async def schema_status(session: SchemaSession) -> list[StoreVersion]:
    """Every store of the database: those in the version table, and the tables of a store's shape written before
    versioning (at version 0)."""
    schema = queries(session.dialect, "schema")
    found: dict[str, tuple[StoreKind, int]] = {}
    if await session.rows(schema["table_exists"], VERSION_TABLE):
        for store, kind, version in await session.rows(schema["store_versions"]):
            found[str(store)] = (StoreKind(kind), int(version))
    known = {store.lower() for store in found} | {VERSION_TABLE}
    for table, columns in sorted((await _columns(session)).items()):
        kind_of = [kind for kind, signature in _SIGNATURES.items() if signature <= columns]
        if table not in known and kind_of:
            found[table] = (kind_of[0], 0)
    return [
        StoreVersion(store, kind, version, latest_version(session.dialect, kind))
        for store, (kind, version) in sorted(found.items())
    ]


async def upgrade_stores(session: SchemaSession) -> list[StoreVersion]:
    """Apply every pending migration of every store of the database; the stores as they were before."""
    before = await schema_status(session)
    for store in before:
        if store.version > store.latest:
            raise SchemaTooNewError(store.store, store.kind, store.version, store.latest)
    for store in before:
        await migrate_store(session, store.store, store.kind)
    return before
