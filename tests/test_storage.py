"""Storage backends: the conformance suite on SQLite files and on memory, and backend-specific checks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llama_batches.errors import ConfigError
from llama_batches.storage import (
    MemoryDatabase,
    SqliteDatabase,
    SqlStoreReference,
    StorageBackends,
    table_name,
)
from llama_batches.storage.base import check_identifier
from llama_batches.storage.config import (
    MemoryBackendConfig,
    OtherBackendConfig,
    PostgresBackendConfig,
    SqliteBackendConfig,
)
from llama_batches.storage.postgres import PostgresDatabase
from llama_batches.storage.sqlite import SqliteTable

from .conformance.storage import (
    LeaseOpener,
    LeasesConformance,
    LogOpener,
    Note,
    ResultLogConformance,
    StorageConformance,
    TableOpener,
)


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    db = SqliteDatabase(tmp_path / "store.db")
    yield db
    await db.close()


class TestSqlite(StorageConformance, ResultLogConformance, LeasesConformance):
    @pytest.fixture
    def tables(self, sqlite_db: SqliteDatabase) -> TableOpener:
        return lambda name: sqlite_db.table(name, Note)

    @pytest.fixture
    def result_logs(self, sqlite_db: SqliteDatabase) -> LogOpener:
        return sqlite_db.result_log

    @pytest.fixture
    def lease_tables(self, sqlite_db: SqliteDatabase) -> LeaseOpener:
        return sqlite_db.leases


class TestMemory(StorageConformance, ResultLogConformance, LeasesConformance):
    @pytest.fixture
    def tables(self) -> TableOpener:
        db = MemoryDatabase()
        return lambda name: db.table(name, Note)

    @pytest.fixture
    def result_logs(self) -> LogOpener:
        return MemoryDatabase().result_log

    @pytest.fixture
    def lease_tables(self) -> LeaseOpener:
        return MemoryDatabase().leases


@pytest.fixture
async def postgres_db(postgres: dict[str, Any]) -> AsyncIterator[PostgresDatabase]:
    db = PostgresDatabase(PostgresBackendConfig(type="sql_postgres", **postgres))
    yield db
    await db.close()


@pytest.mark.postgres
class TestPostgres(StorageConformance, ResultLogConformance, LeasesConformance):
    """The same suite on the real PostgreSQL server (a fresh database per session, fresh tables per test)."""

    @pytest.fixture
    def prefix(self) -> str:
        return f"t{uuid.uuid4().hex[:10]}_"

    @pytest.fixture
    def tables(self, postgres_db: PostgresDatabase, prefix: str) -> TableOpener:
        return lambda name: postgres_db.table(prefix + name, Note)

    @pytest.fixture
    def result_logs(self, postgres_db: PostgresDatabase, prefix: str) -> LogOpener:
        return lambda name: postgres_db.result_log(prefix + name)

    @pytest.fixture
    def lease_tables(self, postgres_db: PostgresDatabase, prefix: str) -> LeaseOpener:
        return lambda name: postgres_db.leases(prefix + name)


async def test_sqlite_rows_survive_reopening_the_file(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "nested" / "store.db")
    table = await db.table("notes", Note)
    await table.insert("alice", Note(id="a", created_at=1, text="kept"))
    await db.close()
    reopened = SqliteDatabase(tmp_path / "nested" / "store.db")
    stored = await (await reopened.table("notes", Note)).get("alice", "a")
    await reopened.close()
    assert stored is not None and stored.value.text == "kept"


async def test_sqlite_list_reads_one_page_through_an_index(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "store.db")
    table = await db.table("notes", Note)
    assert isinstance(table, SqliteTable)
    conn = await db.connection()
    for tag in (None, "odd"):
        sql = (
            "EXPLAIN QUERY PLAN SELECT data FROM notes WHERE owner = ? AND (? IS NULL OR tag = ?) "
            "AND (created_at, seq) < (SELECT created_at, seq FROM notes WHERE owner = ? AND id = ?) "
            "ORDER BY created_at DESC, seq DESC LIMIT 21"
        )
        async with conn.execute(sql, ("alice", tag, tag, "alice", "x")) as cursor:
            plan = " ".join(str(row[-1]) for row in await cursor.fetchall())
        assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
        assert "INDEX" in plan, plan
    await db.close()


def test_table_names_are_checked_identifiers() -> None:
    assert check_identifier("files_metadata") == "files_metadata"
    for bad in ("files; DROP TABLE x", "1abc", "", "a" * 64, "name-with-dash"):
        with pytest.raises(ValueError, match="not a valid table name"):
            check_identifier(bad)


def test_table_name_from_a_reference_is_sanitised() -> None:
    assert table_name(SqlStoreReference(backend="b", table_name="files_metadata")) == "files_metadata"
    assert table_name(SqlStoreReference(backend="b", namespace="vector_io::faiss"), "batches") == (
        "vector_io__faiss_batches"
    )
    assert table_name(SqlStoreReference(backend="b", namespace="9lives")) == "t_9lives"


async def test_backends_are_opened_once_and_shared(tmp_path: Path) -> None:
    backends = StorageBackends(
        {
            "sql_default": SqliteBackendConfig(type="sql_sqlite", db_path=str(tmp_path / "s.db")),
            "mem": MemoryBackendConfig(type="sql_memory"),
        }
    )
    ref = SqlStoreReference(backend="sql_default", table_name="notes")
    first = await backends.table(ref, "", Note)
    await first.insert("alice", Note(id="a", created_at=1))
    second = await backends.table(ref, "", Note)
    assert await second.get("alice", "a") is not None
    assert backends.backend("sql_default") is backends.backend("sql_default")
    await backends.close()


async def test_an_unknown_backend_names_the_config_path_and_the_known_ones() -> None:
    backends = StorageBackends({"sql_default": MemoryBackendConfig(type="sql_memory")})
    ref = SqlStoreReference(backend="sql_nope", table_name="t")
    with pytest.raises(ConfigError) as info:
        await backends.table(ref, "", Note, path="providers.files[0].config.metadata_store")
    assert info.value.path == "providers.files[0].config.metadata_store"
    assert "sql_nope" in str(info.value) and "sql_default" in str(info.value)


async def test_an_unsupported_backend_type_names_its_config_path() -> None:
    backends = StorageBackends({"kv": OtherBackendConfig(type="kv_redis")})
    with pytest.raises(ConfigError) as info:
        await backends.table(SqlStoreReference(backend="kv", table_name="t"), "", Note)
    assert info.value.path == "storage.backends.kv.type"
    assert "kv_redis" in str(info.value) and "sql_postgres" in str(info.value)
