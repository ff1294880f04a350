"""Versioned schema migrations: a database written by the release before versioning (the "v0 fixture": its DDL
copied literally, with rows) is upgraded, by hand or at start, and everything reads back through the stores; on
SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from llama_batches.cli import app
from llama_batches.storage import Lease, SqlStoreReference, StorageBackends
from llama_batches.storage.config import PostgresBackendConfig, SqliteBackendConfig
from llama_batches.storage.postgres import PostgresDatabase
from llama_batches.storage.schema import (
    VERSION_TABLE,
    Dialect,
    SchemaOutdatedError,
    SchemaTooNewError,
    SchemaVersionError,
    StoreKind,
    latest_version,
    migrations,
    queries,
)
from llama_batches.storage.sqlite import SqliteDatabase

from .conformance.storage import Counts, Note, result
from .conftest import _connect, _create_database, _drop_database

# the v0 fixture: the DDL of the release before versioning, exactly as it wrote it -------------------------------

V0_SQLITE = """
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
CREATE INDEX IF NOT EXISTS {t}_by_tag_only ON {t} (tag, created_at, seq);
"""
V0_SQLITE_RESULTS = """
CREATE TABLE IF NOT EXISTS {t} (
    batch_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    owner TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    output BLOB NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS {t}_by_outcome ON {t} (batch_id, ok, line);
"""
V0_SQLITE_LEASES = (
    "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL, "
    "epoch INTEGER NOT NULL DEFAULT 0, failures INTEGER NOT NULL DEFAULT 0)"
)
V0_POSTGRES = [
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
V0_POSTGRES_RESULTS = [
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
V0_POSTGRES_LEASES = [
    "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, "
    "epoch BIGINT NOT NULL DEFAULT 0, failures BIGINT NOT NULL DEFAULT 0)",
]

# the stores of a reference batches provider (kvstore namespace "batches") and a localfs files provider
BATCHES = SqlStoreReference(backend="db", namespace="batches")
FILES = SqlStoreReference(backend="db", table_name="files_metadata")
STORES = {
    "batches_batches": StoreKind.records,
    "batches_requests": StoreKind.results,
    "batches_leases": StoreKind.leases,
    "files_metadata": StoreKind.records,
}
NOTES = [
    ("alice", Note(id="b1", created_at=100, text="first", counts=Counts(done=3), labels=["x"]), "in_progress"),
    ("alice", Note(id="b2", created_at=200, text="second"), "completed"),
    ("bob", Note(id="b3", created_at=150, text="bobs"), None),
]
RESULTS = [result(1), result(2, ok=False), result(3, tokens=5)]


@dataclass
class Target:
    """A database to migrate, and how to write the v0 fixture into it without llama-batches."""

    dialect: Dialect
    config: SqliteBackendConfig | PostgresBackendConfig

    def database(self, *, auto_migrate: bool = True) -> SqliteDatabase | PostgresDatabase:
        config = self.config.model_copy(update={"auto_migrate": auto_migrate})
        if isinstance(config, SqliteBackendConfig):
            return SqliteDatabase(config.db_path, auto_migrate=auto_migrate)
        return PostgresDatabase(config)

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` (one statement) on a connection of its own; its rows."""
        if isinstance(self.config, SqliteBackendConfig):
            with contextlib.closing(sqlite3.connect(self.config.db_path)) as conn, conn:
                return [tuple(row) for row in conn.execute(sql).fetchall()]
        conn = await _connect(self.config.model_dump(), self.config.db)
        try:
            return [tuple(row) for row in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def write_v0(self) -> None:
        """The v0 fixture: the tables as the release before versioning created them, and rows in each."""
        ddl = {
            Dialect.sqlite: [V0_SQLITE, V0_SQLITE_RESULTS, V0_SQLITE_LEASES],
            Dialect.postgres: ["; ".join(V0_POSTGRES), "; ".join(V0_POSTGRES_RESULTS), "; ".join(V0_POSTGRES_LEASES)],
        }[self.dialect]
        true = "1" if self.dialect is Dialect.sqlite else "TRUE"
        false = "0" if self.dialect is Dialect.sqlite else "FALSE"
        blob = "X'{hex}'" if self.dialect is Dialect.sqlite else "'\\x{hex}'::bytea"
        statements = [ddl[0].format(t="batches_batches"), ddl[0].format(t="files_metadata")]
        statements += [ddl[1].format(t="batches_requests"), ddl[2].format(t="batches_leases")]
        for table in ("batches_batches", "files_metadata"):
            for owner, note, tag in NOTES:
                tag_sql = f"'{tag}'" if tag else "NULL"
                statements.append(
                    f"INSERT INTO {table} (owner, id, created_at, tag, data) "
                    f"VALUES ('{owner}', '{note.id}', {note.created_at}, {tag_sql}, '{note.model_dump_json()}')"
                )
        for r in RESULTS:
            statements.append(
                "INSERT INTO batches_requests VALUES "
                f"('{r.batch_id}', {r.line}, 'alice', '{r.custom_id}', {true if r.ok else false}, "
                f"{blob.format(hex=r.output.hex())}, {r.input_tokens}, {r.output_tokens}, 0, 0)"
            )
        statements.append("INSERT INTO batches_leases VALUES ('b1', 'w1', 150.0, 4, 1)")
        await self._script(statements)

    async def _script(self, statements: list[str]) -> None:
        if isinstance(self.config, SqliteBackendConfig):
            with contextlib.closing(sqlite3.connect(self.config.db_path)) as conn:
                conn.executescript(";\n".join(statements) + ";")
            return
        conn = await _connect(self.config.model_dump(), self.config.db)
        try:
            await conn.execute(";\n".join(statements))
        finally:
            await conn.close()


@pytest.fixture(params=[Dialect.sqlite, pytest.param(Dialect.postgres, marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """An empty database of each dialect (PostgreSQL: a fresh database of its own, for its version table)."""
    if request.param is Dialect.sqlite:
        yield Target(Dialect.sqlite, SqliteBackendConfig(type="sql_sqlite", db_path=str(tmp_path / "v0.db")))
        return
    server: dict[str, Any] = request.getfixturevalue("postgres")
    name = asyncio.run(_create_database(server))
    try:
        yield Target(Dialect.postgres, PostgresBackendConfig(type="sql_postgres", **{**server, "db": name}))
    finally:
        asyncio.run(_drop_database(server, name))


async def _read_back(backends: StorageBackends) -> None:
    """Everything of the v0 fixture, read through the stores, and a write of each kind."""
    for ref, suffix in ((BATCHES, "batches"), (FILES, "")):
        table = await backends.table(ref, suffix, Note)
        for owner, note, _ in NOTES:
            stored = await table.get(owner, note.id)
            assert stored is not None and stored.value == note and stored.version == 1
        assert [n.id for n in (await table.list("alice")).items] == ["b2", "b1"]
        assert [owner for owner, _ in await table.list_tagged(["in_progress"])] == ["alice"]
        updated = await table.update("alice", "b1", {"counts": {"failed": 2}}, when_tags=["in_progress"])
        assert updated is not None and updated.value.counts == Counts(done=3, failed=2)
        assert await table.insert("carol", Note(id="c1", created_at=300))
    log = await backends.result_log(BATCHES, "requests")
    assert await log.read("batch_1", ok=True) == [RESULTS[0], RESULTS[2]]
    assert await log.read("batch_1", ok=False) == [RESULTS[1]]
    assert (await log.totals("batch_1")).input_tokens == 7
    await log.record("alice", [result(4)])
    assert await log.done_lines("batch_1") == {1, 2, 3, 4}
    leases = await backends.leases(BATCHES, "leases")
    assert await leases.current("b1") == Lease("b1", "w1", epoch=4, failures=1)
    assert await leases.acquire("b1", "w2", 10, now=200) == Lease("b1", "w2", epoch=5, failures=2)


async def _versions(target: Target) -> list[tuple[str, str, int]]:
    rows = await target.rows(f"SELECT store, kind, version FROM {VERSION_TABLE} ORDER BY store, version")
    return [(str(store), str(kind), int(version)) for store, kind, version in rows]


def _at_latest(target: Target) -> list[tuple[str, str, int]]:
    return sorted(
        (store, kind.value, m.version) for store, kind in STORES.items() for m in migrations(target.dialect, kind)
    )


async def test_a_v0_database_upgraded_by_hand_reads_back_through_the_stores(target: Target) -> None:
    await target.write_v0()
    database = target.database(auto_migrate=False)
    try:
        before = await database.upgrade()
        assert {s.store: (s.kind, s.version) for s in before} == {store: (kind, 0) for store, kind in STORES.items()}
        after = await database.schema_status()
        assert all(s.version == s.latest and not s.pending for s in after) and len(after) == len(STORES)
        assert await database.upgrade() == after  # nothing left to do
    finally:
        await database.close()
    assert await _versions(target) == _at_latest(target)
    backends = StorageBackends({"db": target.config.model_copy(update={"auto_migrate": False})})
    try:
        await _read_back(backends)
    finally:
        await backends.close()


async def test_a_v0_database_is_migrated_when_its_stores_are_opened(target: Target) -> None:
    await target.write_v0()
    backends = StorageBackends({"db": target.config})
    try:
        await _read_back(backends)
    finally:
        await backends.close()
    assert await _versions(target) == _at_latest(target)


async def test_processes_starting_together_on_a_v0_database_migrate_it_once(target: Target) -> None:
    await target.write_v0()
    starts = [StorageBackends({"db": target.config}) for _ in range(4)]  # each with connections of its own

    async def start(backends: StorageBackends) -> None:
        await backends.table(BATCHES, "batches", Note)
        await backends.result_log(BATCHES, "requests")
        await backends.leases(BATCHES, "leases")
        await backends.table(FILES, "", Note)

    try:
        await asyncio.gather(*(start(backends) for backends in starts))
    finally:
        for backends in starts:
            await backends.close()
    assert await _versions(target) == _at_latest(target)  # each migration recorded once (a second would conflict)


async def test_a_store_newer_than_this_release_is_a_clear_error(target: Target) -> None:
    database = target.database()
    try:
        await database.table("batches_batches", Note)
        await target.rows(f"INSERT INTO {VERSION_TABLE} (store, kind, version, name) VALUES ('batches_batches', "
                          "'records', 99, 'future') RETURNING version")  # fmt: skip
        with pytest.raises(SchemaTooNewError) as info:
            await database.table("batches_batches", Note)
        assert (info.value.store, info.value.found, info.value.latest) == ("batches_batches", 99, 1)
        assert "newer than this release" in info.value.message
        with pytest.raises(SchemaTooNewError):
            await database.upgrade()
    finally:
        await database.close()


async def test_without_auto_migrate_a_missing_store_is_created_and_an_old_one_refused(target: Target) -> None:
    await target.write_v0()
    database = target.database(auto_migrate=False)
    try:
        await database.table("fresh_batches", Note)  # a new store: created at the latest version
        with pytest.raises(SchemaOutdatedError) as info:
            await database.table("batches_batches", Note)
        assert "llama-batches db upgrade" in info.value.message
        status = {s.store: s.version for s in await database.schema_status()}
        assert status == {"fresh_batches": 1, **dict.fromkeys(STORES, 0)}
    finally:
        await database.close()


async def test_a_table_opened_as_another_kind_is_a_clear_error(target: Target) -> None:
    database = target.database()
    try:
        await database.table("shared_name", Note)
        with pytest.raises(SchemaVersionError, match="holds records, not leases"):
            await database.leases("shared_name")
    finally:
        await database.close()


def test_db_status_and_upgrade_commands(tmp_path: Path) -> None:
    db_path = str(tmp_path / "v0.db")
    asyncio.run(Target(Dialect.sqlite, SqliteBackendConfig(type="sql_sqlite", db_path=db_path)).write_v0())
    config = tmp_path / "run.yaml"
    storage = {
        "db": {"type": "sql_sqlite", "db_path": db_path},
        "later": {"type": "sql_sqlite", "db_path": str(tmp_path / "later.db")},
        "mem": {"type": "sql_memory"},
    }
    config.write_text(yaml.safe_dump({"providers": {}, "storage": {"backends": storage}}))
    runner = CliRunner()
    status = runner.invoke(app, ["db", "status", "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert "batches_leases" in status.output and "unversioned" in status.output
    assert "no tables yet" in status.output and not (tmp_path / "later.db").exists()
    upgrade = runner.invoke(app, ["db", "upgrade", "--config", str(config)])
    assert upgrade.exit_code == 0, upgrade.output
    assert "4 migration(s) applied" in upgrade.output
    again = runner.invoke(app, ["db", "status", "--config", str(config)])
    assert again.output.count("up to date") == len(STORES), again.output
    assert "every store is up to date" in runner.invoke(app, ["db", "upgrade", "-c", str(config)]).output


def test_every_dialect_has_the_same_numbered_migrations_and_statements() -> None:
    for kind in StoreKind:
        numbered = [[(m.version, m.name) for m in migrations(dialect, kind)] for dialect in Dialect]
        assert numbered[0] == numbered[1] and numbered[0][0] == (1, "initial"), kind
        assert latest_version(Dialect.sqlite, kind) == len(numbered[0])
    assert set(queries(Dialect.sqlite, "schema")) | {"lock"} == set(queries(Dialect.postgres, "schema"))


def test_named_statements_load_on_one_line_without_their_comments() -> None:
    for dialect in Dialect:
        for file in ("records", "results", "leases", "schema"):
            statements = queries(dialect, file)
            assert statements, (dialect, file)
            for name, sql in statements.items():
                assert sql and "\n" not in sql and "--" not in sql, (dialect, file, name)
    assert queries(Dialect.sqlite, "leases")["renew"] == (
        "UPDATE {t} SET expires_at = ? WHERE key = ? AND epoch = ? AND holder = ?"
    )
