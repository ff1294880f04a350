"""Failure containment of the reference engine, on purpose: providers with bugs, a store that fails for a while or
for good, an input file deleted under a batch, a lease renewal cut while a write is slow. Each on memory, SQLite and
PostgreSQL where the store matters. The checks are the engine's promises: every batch ends; a completed batch has
one line per request across its files; nothing is run twice except requests in flight; a worker that lost its
lease writes nothing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llama_batches import Stack, build_stack
from llama_batches.api import BatchStatus, FilePurpose
from llama_batches.storage import MemoryDatabase, SqliteDatabase, TableFactory
from llama_batches.storage.config import PostgresBackendConfig

from .conftest import openai_provider, run_config
from .engine_harness import Workers, engine_config, requests
from .fake_backend import FakeBackend
from .faults import Fault, Faults, FaultyFiles, FaultyInference

WINDOW = 4


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_kind(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any] | None]:
    """Which database the engine uses (and the test server's settings, for PostgreSQL)."""
    return request.param, request.getfixturevalue("postgres") if request.param == "postgres" else None


@pytest.fixture
async def db(store_kind: tuple[str, dict[str, Any] | None], tmp_path: Path) -> AsyncIterator[TableFactory]:
    """The engine's database: in memory, a SQLite file, or the test PostgreSQL server."""
    kind, postgres = store_kind
    if kind == "memory":
        yield MemoryDatabase()
        return
    if postgres is None:
        opened: TableFactory = SqliteDatabase(tmp_path / "engine.db")
    else:
        from llama_batches.storage.postgres import PostgresDatabase

        opened = PostgresDatabase(PostgresBackendConfig(type="sql_postgres", **postgres))
    yield opened
    await opened.close()


@pytest.fixture
async def stack(tmp_path: Path, fake_backend: FakeBackend) -> AsyncIterator[Stack]:
    """Files, models and inference (on the fake backend) for hand-built engines."""
    async with build_stack(run_config(tmp_path, openai_provider(fake_backend.base_url))) as built:
        yield built


def once_each(results: list[dict[str, Any]], count: int) -> None:
    """Every request of a ``count``-line batch has exactly one line across its files."""
    assert sorted(Counter(r["custom_id"] for r in results).items()) == sorted((f"req-{i}", 1) for i in range(count))


@pytest.mark.parametrize("count", [3, 30])
async def test_a_request_the_engine_fails_on_is_one_error_line_and_the_batch_completes(
    stack: Stack, count: int
) -> None:
    poisoned = FaultyInference(stack.inference, marker=b"poison", error=RuntimeError("a provider bug"))
    lines = requests(count)
    lines[1]["body"]["messages"][0]["content"] = "poison"
    async with Workers.start(stack, MemoryDatabase(), engine_config()) as workers:
        await workers.add(inference=poisoned, max_concurrent_requests_per_batch=WINDOW)
        done = await workers.wait((await workers.create(lines)).id)
        results = await workers.results(done)
    assert done.status == BatchStatus.completed
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed, done.request_counts.total) == (
        count - 1,
        1,
        count,
    )
    once_each(results, count)
    [failed] = [r for r in results if r["error"] is not None]
    assert failed["custom_id"] == "req-1" and failed["error"]["code"] == "internal_error"
    assert "RuntimeError" in failed["error"]["message"] and "a provider bug" in failed["error"]["message"]


async def test_a_flush_that_fails_for_a_while_pauses_dispatch_and_keeps_every_result(
    stack: Stack, db: TableFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.latency_s = 0.002
    faults = Faults(record=Fault(between=(2, 7)))
    watched = FaultyInference(stack.inference)
    async with Workers.start(stack, db, engine_config(store_retry_timeout_s=10)) as workers:
        worker = await workers.add(log_faults=faults, inference=watched, max_concurrent_requests_per_batch=WINDOW)
        done = await workers.wait((await workers.create(requests(100))).id)
        results = await workers.results(done)
        lease = await worker.leases.current(done.id)
    assert done.status == BatchStatus.completed
    assert faults["record"].failed == 5
    down, up = (
        faults["record"].failed_at[0],
        min(w.at for w in worker.log.accepted if w.at > faults["record"].failed_at[0]),
    )
    assert up - down > 0.05  # the retries took a while (backoff) ...
    assert len([t for t in watched.started if down < t < up]) <= WINDOW  # ... and no more than a window started then
    once_each(results, 100)
    assert sorted(fake_backend.seen.values()) == [1] * 100  # no result lost, so nothing ran twice
    assert lease is not None and lease.failures == 0  # the run never stopped


async def test_a_store_that_stays_down_fails_the_batch_after_a_bounded_number_of_runs(
    stack: Stack, db: TableFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.latency_s = 0.002
    attempts = 3
    faults = Faults(record=Fault(from_call=1))
    config = engine_config(store_retry_timeout_s=0.1, max_batch_attempts=attempts)
    async with Workers.start(stack, db, config) as workers:
        worker = await workers.add(log_faults=faults, max_concurrent_requests_per_batch=WINDOW)
        done = await workers.wait((await workers.create(requests(200))).id)
        lease = await worker.leases.current(done.id)
    assert done.status == BatchStatus.failed and done.failed_at
    assert done.errors is not None and done.errors.data
    [error] = done.errors.data
    assert error.code == "execution_failed"
    assert error.message is not None and "after 3 failed runs" in error.message and "InjectedFault" in error.message
    assert lease is not None and (lease.epoch, lease.failures) == (attempts, attempts - 1)  # the last run gave up
    assert done.output_file_id is None  # nothing was ever stored, so there is nothing to keep
    # each run sends its window, and the requests that start while its first failing flush is under way; then
    # dispatch pauses until the run gives up: a few windows per run, whatever the batch's size
    assert 0 < fake_backend.total_requests <= attempts * 3 * WINDOW


async def test_an_input_file_deleted_under_a_batch_fails_it_at_once_after_a_restart(
    stack: Stack, db: TableFactory, fake_backend: FakeBackend
) -> None:
    fake_backend.latency_s = 0.01
    async with Workers.start(stack, db, engine_config()) as workers:
        first = await workers.add(max_concurrent_requests_per_batch=2)
        batch = await workers.create(requests(60))
        async with asyncio.timeout(10):
            while fake_backend.succeeded < 10:
                await asyncio.sleep(0.005)
        await first.engine.shutdown()  # the server stops ...
        await stack.files.openai_delete_file(batch.input_file_id)  # ... the file goes ...
        sent = fake_backend.total_requests
        await workers.add()  # ... and the next server finds the batch without it
        done = await workers.wait(batch.id)
        results = await workers.results(done)
        lease = await first.leases.current(batch.id)
    assert done.status == BatchStatus.failed
    assert done.errors is not None and done.errors.data
    [error] = done.errors.data
    assert (error.code, error.param) == ("input_file_unavailable", "input_file_id")
    assert lease is not None and lease.failures == 0  # failed at once, not after retries
    assert fake_backend.total_requests == sent  # and not one request more
    assert done.request_counts is not None and len(results) == done.request_counts.completed > 0  # kept


async def test_a_cut_lease_renewal_stops_the_worker_and_its_late_write_is_refused(
    stack: Stack, db: TableFactory, fake_backend: FakeBackend
) -> None:
    """Worker A loses the lease table (a partition: renewals, releases and claims fail) while its checkpoint
    writes are slow: its last flush reaches the store after worker B has taken the batch over. The fence refuses
    it; B runs those requests again; each has one line in the files."""
    fake_backend.latency_s = 0.005
    ttl = 0.6
    config = engine_config(lease_ttl_s=ttl, max_concurrent_requests_per_batch=WINDOW)
    watched = FaultyInference(stack.inference)
    partition = Faults()
    async with Workers.start(stack, db, config) as workers:
        a = await workers.add(
            lease_faults=partition, log_faults=Faults(record=Fault(delay_s=ttl * 2)), inference=watched
        )
        batch = await workers.create(requests(40))
        async with asyncio.timeout(10):
            while batch.id not in a.engine.scheduler.runners:
                await asyncio.sleep(0.005)
        for method in ("renew", "release", "claim"):
            partition[method].cut()
        b = await workers.add()
        done = await workers.wait(batch.id)
        results = await workers.results(done)
    cut = partition["renew"].failed_at[0]
    assert all(started <= cut for started in watched.started), "A sent requests after losing its lease"
    taken_over = min(at for at, lease in b.leases.granted if lease.key == batch.id)
    assert a.log.refused >= 1  # A's late flush reached the store ...
    assert all(write.at < taken_over for write in a.log.accepted)  # ... and none was accepted after B took over
    assert {write.epoch for write in b.log.accepted} == {2}
    assert done.status == BatchStatus.completed
    once_each(results, 40)
    assert all(count <= 2 for count in fake_backend.seen.values())


async def test_a_heartbeat_that_hangs_stops_the_run_within_one_period(stack: Stack, fake_backend: FakeBackend) -> None:
    fake_backend.latency_s = 0.01
    ttl = 0.9
    renewals = Faults(renew=Fault(delay_s=60))
    async with Workers.start(stack, MemoryDatabase(), engine_config(lease_ttl_s=ttl)) as workers:
        worker = await workers.add(lease_faults=renewals, max_concurrent_requests_per_batch=2)
        batch = await workers.create(requests(500))
        async with asyncio.timeout(5):
            while len(worker.leases.granted) < 2:  # the first run stopped and released; the next one began
                await asyncio.sleep(0.005)
    (first, _), (second, _) = worker.leases.granted[:2]
    assert second - first < 2 * ttl / 3 + 0.2, f"the run went on {second - first:.2f}s with a hung heartbeat"
    assert batch.id == worker.leases.granted[1][1].key
    assert worker.leases.granted[1][1].failures == 1  # a store that cannot be reached counts as a failed run


async def test_a_slow_store_pauses_dispatch_so_few_results_wait_unrecorded(
    stack: Stack, db: TableFactory, fake_backend: FakeBackend
) -> None:
    """A checkpoint write that is slow but does not fail: dispatch waits for it rather than piling up results that
    a crash would lose. Answered but not stored, at any moment: fewer than max_unrecorded_results plus the window."""
    fake_backend.latency_s = 0.002
    async with Workers.start(stack, db, engine_config()) as workers:
        worker = await workers.add(
            log_faults=Faults(record=Fault(delay_s=0.3)),
            max_concurrent_requests_per_batch=WINDOW,
            max_unrecorded_results=WINDOW,
        )
        batch = await workers.create(requests(120))
        gaps = []
        async with asyncio.timeout(60):
            while (await worker.engine.retrieve_batch(batch.id)).status == BatchStatus.validating:
                await asyncio.sleep(0.01)
            while (await worker.engine.retrieve_batch(batch.id)).status == BatchStatus.in_progress:
                gaps.append(fake_backend.succeeded - sum(len(write.lines) for write in worker.log.accepted))
                await asyncio.sleep(0.05)
        done = await workers.wait(batch.id)
    assert done.status == BatchStatus.completed
    assert gaps and max(gaps) < 2 * WINDOW, gaps


async def test_a_cancel_after_the_last_line_was_queued_cancels_without_counting_a_failed_run(
    stack: Stack, fake_backend: FakeBackend
) -> None:
    fake_backend.latency_s = 0.5
    config = engine_config(max_batch_attempts=1)  # a run counted as failed would end the batch `failed`
    async with Workers.start(stack, MemoryDatabase(), config) as workers:
        worker = await workers.add(max_concurrent_requests_per_batch=WINDOW)
        batch = await workers.create(requests(2 * WINDOW))
        async with asyncio.timeout(10):
            while fake_backend.requests.get("/v1/chat/completions", 0) < WINDOW:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the reader has queued every line: a window in flight, a window queued
        await worker.engine.cancel_batch(batch.id)
        done = await workers.wait(batch.id)
        lease = await worker.leases.current(batch.id)
    assert done.status == BatchStatus.cancelled
    assert lease is not None and lease.failures == 0
    assert fake_backend.requests["/v1/chat/completions"] == WINDOW  # the queued window was never sent


async def test_files_written_under_a_lease_that_passed_on_are_deleted(stack: Stack, fake_backend: FakeBackend) -> None:
    """Worker A's output upload is slow; worker B (its clock ahead) takes the batch over and finishes it. A's
    finishing write is refused by the fence, and A deletes the file it had uploaded: one output file remains."""
    slow = FaultyFiles(stack.files, purpose=FilePurpose.batch_output, upload_delay_s=1.0)
    async with Workers.start(stack, MemoryDatabase(), engine_config()) as workers:
        a = await workers.add(files=slow, lease_ttl_s=30)
        batch = await workers.create(requests(3))
        async with asyncio.timeout(10):
            await slow.slow_started.wait()
        await workers.add(clock=lambda: time.time() + 100)  # sees A's lease as expired
        done = await workers.wait(batch.id)
        async with asyncio.timeout(10):
            while not a.log.refused and len(a.engine.scheduler.runners):
                await asyncio.sleep(0.02)
            while len(a.engine.scheduler.runners):
                await asyncio.sleep(0.02)
        listed = await stack.files.openai_list_files(purpose=FilePurpose.batch_output)
    assert done.status == BatchStatus.completed
    assert [f.id for f in listed.data] == [done.output_file_id]


async def test_a_run_still_finishing_after_its_lease_passed_on_does_not_hide_the_new_run(
    stack: Stack, fake_backend: FakeBackend
) -> None:
    """The heartbeat stops a run whose last checkpoint write outlasts the lease; the same worker claims the batch
    again meanwhile. When the old run ends, the new one must still count as running here."""
    fake_backend.latency_s = 0.01
    async with Workers.start(stack, MemoryDatabase(), engine_config(lease_ttl_s=0.6)) as workers:
        worker = await workers.add(
            log_faults=Faults(record=Fault(delay_s=1.5)),
            lease_faults=Faults(renew=Fault(calls={1})),
            max_concurrent_requests_per_batch=2,
        )
        batch = await workers.create(requests(400))
        async with asyncio.timeout(10):
            while len(worker.leases.granted) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.5)  # the first run has ended by now
        assert batch.id in worker.engine.scheduler.runners


async def test_a_cancel_abandons_requests_still_in_flight_after_the_grace_period(
    stack: Stack, fake_backend: FakeBackend
) -> None:
    """A backend that takes a minute per answer must not hold a cancel for a minute: after cancel_grace_s the
    requests in flight are abandoned and the batch is cancelled."""
    fake_backend.latency_s = 60
    async with Workers.start(stack, MemoryDatabase(), engine_config(cancel_grace_s=0.3)) as workers:
        worker = await workers.add(max_concurrent_requests_per_batch=WINDOW)
        batch = await workers.create(requests(3 * WINDOW))
        async with asyncio.timeout(10):
            while fake_backend.requests.get("/v1/chat/completions", 0) < WINDOW:
                await asyncio.sleep(0.01)
        cancelled_at = time.monotonic()
        await worker.engine.cancel_batch(batch.id)
        done = await workers.wait(batch.id, timeout=10)
        took = time.monotonic() - cancelled_at
    assert done.status == BatchStatus.cancelled
    assert took < 2, f"the cancel took {took:.1f}s"
    assert done.request_counts is not None and done.request_counts.completed == 0


async def test_a_cancel_made_elsewhere_after_the_last_line_was_queued_is_seen_and_prompt(
    stack: Stack, fake_backend: FakeBackend
) -> None:
    """The reader has queued every line, so nothing polls the store from the feed loop any more: the cancel,
    made through another process's API, is still seen within about a second and the batch ends promptly."""
    fake_backend.latency_s = 60
    async with Workers.start(stack, MemoryDatabase(), engine_config(cancel_grace_s=0.3)) as workers:
        api = await workers.add(execute=False)
        await workers.add(max_concurrent_requests_per_batch=WINDOW)
        batch = await workers.create(requests(WINDOW), via=api)
        async with asyncio.timeout(10):
            while fake_backend.requests.get("/v1/chat/completions", 0) < WINDOW:
                await asyncio.sleep(0.01)
        cancelled_at = time.monotonic()
        await api.engine.cancel_batch(batch.id)
        done = await workers.wait(batch.id, timeout=10)
        took = time.monotonic() - cancelled_at
    assert done.status == BatchStatus.cancelled
    assert took < 3, f"the cancel took {took:.1f}s"
