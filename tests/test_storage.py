"""Storage backends: the conformance suite on SQLite files and on memory, and backend-specific checks."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llama_batches.api.common import Order
from llama_batches.errors import ConfigError
from llama_batches.storage import (
    Lease,
    LeaseLost,
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
    ClaimConformance,
    FenceConformance,
    LeaseOpener,
    LeasesConformance,
    LogOpener,
    Note,
    ResultLogConformance,
    StorageConformance,
    TableOpener,
    result,
)


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    db = SqliteDatabase(tmp_path / "store.db")
    yield db
    await db.close()


class TestSqlite(StorageConformance, ResultLogConformance, LeasesConformance, ClaimConformance, FenceConformance):
    @pytest.fixture
    def tables(self, sqlite_db: SqliteDatabase) -> TableOpener:
        return lambda name: sqlite_db.table(name, Note)

    @pytest.fixture
    def result_logs(self, sqlite_db: SqliteDatabase) -> LogOpener:
        return sqlite_db.result_log

    @pytest.fixture
    def lease_tables(self, sqlite_db: SqliteDatabase) -> LeaseOpener:
        return sqlite_db.leases


class TestMemory(StorageConformance, ResultLogConformance, LeasesConformance, ClaimConformance, FenceConformance):
    @pytest.fixture
    def memory_db(self) -> MemoryDatabase:
        return MemoryDatabase()

    @pytest.fixture
    def tables(self, memory_db: MemoryDatabase) -> TableOpener:
        return lambda name: memory_db.table(name, Note)

    @pytest.fixture
    def result_logs(self, memory_db: MemoryDatabase) -> LogOpener:
        return memory_db.result_log

    @pytest.fixture
    def lease_tables(self, memory_db: MemoryDatabase) -> LeaseOpener:
        return memory_db.leases


@pytest.fixture
async def postgres_db(postgres: dict[str, Any]) -> AsyncIterator[PostgresDatabase]:
    db = PostgresDatabase(PostgresBackendConfig(type="sql_postgres", **postgres))
    yield db
    await db.close()


@pytest.mark.postgres
class TestPostgres(StorageConformance, ResultLogConformance, LeasesConformance, ClaimConformance, FenceConformance):
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
    for tag, after in ((None, None), ("odd", None), (None, "x"), ("odd", "x")):
        for order in Order:
            sql, params = table.list_statement("alice", after=after, limit=20, order=order, tag=tag)
            async with conn.execute(f"EXPLAIN QUERY PLAN {sql}", params) as cursor:
                plan = " ".join(str(row[-1]) for row in await cursor.fetchall())
            assert "USE TEMP B-TREE FOR ORDER BY" not in plan, (tag, after, order, plan)
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


# leases and fences, backend by backend -------------------------------------------------------------------------

_OLD_LEASES_SCHEMA = "CREATE TABLE {t} (key TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL)"


def _old_sqlite_lease_table(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(_OLD_LEASES_SCHEMA.format(t="leases"))
        conn.execute("INSERT INTO leases VALUES ('b1', 'w1', 150.0)")


async def test_sqlite_lease_table_of_the_old_schema_is_migrated(tmp_path: Path) -> None:
    _old_sqlite_lease_table(tmp_path / "old.db")
    db = SqliteDatabase(tmp_path / "old.db")
    try:
        leases = await db.leases("leases")
        assert await leases.current("b1") == Lease("b1", "w1", epoch=0)
        assert await leases.holder("b1", now=100) == "w1"
        assert await leases.acquire("b1", "w2", 10, now=100) is None
        lease = await leases.acquire("b1", "w2", 10, now=150)
        assert lease == Lease("b1", "w2", epoch=1, failures=1)  # w1 never released it
        await leases.release(lease, failed=True)
        again = await db.leases("leases")
        assert await again.current("b1") == Lease("b1", "", epoch=1, failures=2)
        conn = await db.connection()
        async with conn.execute("SELECT name FROM pragma_table_info('leases')") as cursor:
            columns = [str(row[0]) for row in await cursor.fetchall()]
        assert columns == ["key", "holder", "expires_at", "epoch", "failures"]
    finally:
        await db.close()


async def test_sqlite_fences_hold_across_connections_to_one_file(tmp_path: Path) -> None:
    """Two SqliteDatabase objects on one file stand for two processes: a takeover through one refuses the other's
    fenced writes, and an acquisition waits for a fenced write in progress (the file's write lock)."""
    first_db, second_db = SqliteDatabase(tmp_path / "shared.db"), SqliteDatabase(tmp_path / "shared.db")
    try:
        table, log = await first_db.table("batches", Note), await first_db.result_log("results")
        first_leases, second_leases = await first_db.leases("leases"), await second_db.leases("leases")
        await table.insert("alice", Note(id="b1", created_at=1))
        first = await first_leases.acquire("b1", "w1", 10, now=100)
        second = await second_leases.acquire("b1", "w2", 10, now=200)
        assert first is not None and second is not None and second.epoch == 2
        with pytest.raises(LeaseLost):
            await table.update("alice", "b1", {"text": "stale"}, fence=first_leases.fence(first))
        with pytest.raises(LeaseLost):
            await log.record("alice", [result(1, batch_id="b1")], fence=first_leases.fence(first))
        assert await log.done_lines("b1") == set()
        assert await table.update("alice", "b1", {"text": "w2"}, fence=second_leases.fence(second)) is not None

        async with first_db.transaction(second_leases.fence(second)) as conn:
            takeover = asyncio.create_task(second_leases.acquire("b1", "w3", 10, now=300))
            await asyncio.sleep(0.3)
            assert not takeover.done()
            await conn.execute("UPDATE batches SET tag = 'fenced' WHERE id = 'b1'")
        async with asyncio.timeout(10):
            third = await takeover
        assert third == Lease("b1", "w3", epoch=3, failures=2)  # w1 and w2 never released it
        second_table = await second_db.table("batches", Note)
        assert [n.id for n in (await second_table.list("alice", tag="fenced")).items] == ["b1"]
    finally:
        await first_db.close()
        await second_db.close()


async def test_sqlite_write_cancelled_while_waiting_for_the_file_leaves_no_transaction_open(tmp_path: Path) -> None:
    """A transaction whose BEGIN waits for another connection's lock, then is cancelled, is rolled back: later
    autocommit writes on that connection still commit (and are seen by the other one)."""
    first_db, second_db = SqliteDatabase(tmp_path / "shared.db"), SqliteDatabase(tmp_path / "shared.db")
    try:
        log, table = await first_db.result_log("results"), await first_db.table("notes", Note)
        async with second_db.transaction():
            waiting = asyncio.create_task(log.record("alice", [result(1)]))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await waiting
        await table.insert("alice", Note(id="a", created_at=1))
        assert await (await second_db.table("notes", Note)).get("alice", "a") is not None
        assert await (await second_db.result_log("results")).done_lines("batch_1") == set()
    finally:
        await first_db.close()
        await second_db.close()


async def test_a_lease_table_claims_only_tables_of_its_own_database(tmp_path: Path) -> None:
    first_db, second_db = SqliteDatabase(tmp_path / "a.db"), SqliteDatabase(tmp_path / "b.db")
    try:
        leases = await first_db.leases("leases")
        for table in (await second_db.table("batches", Note), await MemoryDatabase().table("batches", Note)):
            with pytest.raises(TypeError):
                await leases.claim(table, ["validating"], "w1", 10, now=100, limit=1)
        with pytest.raises(TypeError):
            await (await MemoryDatabase().leases("leases")).claim(
                await first_db.table("batches", Note), ["validating"], "w1", 10, now=100, limit=1
            )
    finally:
        await first_db.close()
        await second_db.close()


async def _connect(postgres: dict[str, Any]) -> Any:
    import asyncpg

    return await asyncpg.connect(
        host=postgres["host"],
        port=postgres["port"],
        user=postgres["user"],
        password=postgres["password"],
        database=postgres["db"],
    )


async def _wait_for_lock_waiters(db: PostgresDatabase, count: int) -> None:
    """Until ``count`` sessions of this database wait for a lock (10 s at most). Asked outside any transaction:
    within one, PostgreSQL keeps showing the activity as it was at the transaction's first look."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    async with asyncio.timeout(10):
        while (await db.fetch(sql))[0][0] < count:
            await asyncio.sleep(0.02)


@pytest.mark.postgres
async def test_postgres_opening_a_current_lease_table_takes_no_table_lock(
    postgres: dict[str, Any], postgres_db: PostgresDatabase
) -> None:
    """A process starting while a worker's fenced write holds a lease row must not queue behind it (ALTER TABLE
    would, even with IF NOT EXISTS), or every worker's renewals queue behind the start."""
    name = f"t{uuid.uuid4().hex[:10]}_leases"
    leases = await postgres_db.leases(name)
    assert await leases.acquire("b1", "w1", 10, now=100) is not None
    blocker = await _connect(postgres)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f"SELECT epoch FROM {name} WHERE key = 'b1' FOR SHARE")
        async with asyncio.timeout(2):
            await postgres_db.leases(name)
        await transaction.rollback()
    finally:
        await blocker.close()


@pytest.mark.postgres
async def test_postgres_lease_table_of_the_old_schema_is_migrated(
    postgres: dict[str, Any], postgres_db: PostgresDatabase
) -> None:
    name = f"t{uuid.uuid4().hex[:10]}_leases"
    conn = await _connect(postgres)
    try:
        await conn.execute(_OLD_LEASES_SCHEMA.format(t=name).replace("REAL", "DOUBLE PRECISION"))
        await conn.execute(f"INSERT INTO {name} VALUES ('b1', 'w1', 150.0)")
    finally:
        await conn.close()
    leases = await postgres_db.leases(name)
    assert await leases.current("b1") == Lease("b1", "w1", epoch=0)
    lease = await leases.acquire("b1", "w2", 10, now=150)
    assert lease == Lease("b1", "w2", epoch=1, failures=1)  # w1 never released it
    await leases.release(lease, failed=True)
    again = await postgres_db.leases(name)
    assert await again.current("b1") == Lease("b1", "", epoch=1, failures=2)


@pytest.mark.postgres
async def test_postgres_acquisition_waits_for_a_fenced_record_in_progress(
    postgres: dict[str, Any], postgres_db: PostgresDatabase
) -> None:
    """A fenced record holds its lease row FOR SHARE until it commits: a takeover waits for it, then sees it."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    leases, log = await postgres_db.leases(prefix + "leases"), await postgres_db.result_log(prefix + "results")
    first = await leases.acquire("b1", "w1", 10, now=100)
    assert first is not None
    blocker = await _connect(postgres)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f"INSERT INTO {prefix}results VALUES ('b1', 1, 'x', 'req-1', true, ''::bytea)")
        record = asyncio.create_task(
            log.record("alice", [result(1, batch_id="b1"), result(2, batch_id="b1")], fence=leases.fence(first))
        )
        await _wait_for_lock_waiters(postgres_db, 1)
        takeover = asyncio.create_task(leases.acquire("b1", "w2", 10, now=200))
        await _wait_for_lock_waiters(postgres_db, 2)
        assert not record.done() and not takeover.done()
        await transaction.rollback()
        async with asyncio.timeout(10):
            second = await takeover
            await record
    finally:
        await blocker.close()
    assert second == Lease("b1", "w2", epoch=2, failures=1)
    assert await log.done_lines("b1") == {1, 2}
    assert (await log.read("b1", ok=True))[0].custom_id == "req-1"
    with pytest.raises(LeaseLost):
        await log.record("alice", [result(3, batch_id="b1")], fence=leases.fence(first))


@pytest.mark.postgres
async def test_postgres_claim_passes_over_a_lease_row_a_fenced_write_holds_then_takes_it(
    postgres: dict[str, Any], postgres_db: PostgresDatabase
) -> None:
    """A claim does not wait for the lease row of an expired holder's fenced write still open (a paused or cut-off
    worker may hold it for as long as its connection lives): it passes over that batch, and takes it at the next
    claim once the write is done; the old holder's writes are refused from then on."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    table, leases = await postgres_db.table(prefix + "batches", Note), await postgres_db.leases(prefix + "leases")
    await table.insert("alice", Note(id="b1", created_at=1), tag="in_progress")
    await table.insert("alice", Note(id="b2", created_at=2), tag="in_progress")
    first = await leases.acquire("b1", "w1", 10, now=100)
    assert first is not None
    blocker = await _connect(postgres)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f"SELECT epoch FROM {prefix}leases WHERE key = 'b1' FOR SHARE")
        async with asyncio.timeout(1):
            passed = await leases.claim(table, ["in_progress"], "w2", 10, now=200, limit=5)
        assert [lease.key for _, lease in passed] == ["b2"]
        written = await table.update("alice", "b1", {"text": "w1"}, fence=leases.fence(first))
        assert written is not None  # w1 is still the holder: nobody took b1
        await transaction.commit()
    finally:
        await blocker.close()
    claimed = await leases.claim(table, ["in_progress"], "w3", 10, now=205, limit=5)  # b2 is still w2's
    assert [(owner, lease) for owner, lease in claimed] == [("alice", Lease("b1", "w3", epoch=2, failures=1))]
    with pytest.raises(LeaseLost):
        await table.update("alice", "b1", {"text": "late"}, fence=leases.fence(first))
    stored = await table.get("alice", "b1")
    assert stored is not None and stored.value.text == "w1"
