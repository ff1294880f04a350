"""The scheduler on its own: claims within its room, heartbeats that keep or lose a lease, backoff between failed
runs, and the transition table that every status change goes through."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llama_batches import Stack, build_stack
from llama_batches.api import BatchStatus
from llama_batches.errors import ConflictError
from llama_batches.storage import MemoryDatabase
from llama_batches_reference.transitions import ALLOWED, STAMPS, sources_of

from .conftest import openai_provider, run_config
from .engine_harness import Workers, engine_config, requests
from .fake_backend import FakeBackend
from .faults import Fault, Faults


@pytest.fixture
async def stack(tmp_path: Path, fake_backend: FakeBackend) -> AsyncIterator[Stack]:
    async with build_stack(run_config(tmp_path, openai_provider(fake_backend.base_url))) as built:
        yield built


async def _running(workers: Workers, batch_id: str, *, index: int = -1) -> None:
    async with asyncio.timeout(5):
        while batch_id not in workers.workers[index].engine.scheduler.runners:
            await asyncio.sleep(0.005)


async def test_a_worker_claims_no_more_than_its_room_but_every_batch_being_cancelled(
    stack: Stack, fake_backend: FakeBackend
) -> None:
    fake_backend.latency_s = 0.05
    async with Workers.start(stack, MemoryDatabase(), engine_config()) as workers:
        await workers.add(execute=False)  # an API server
        worker = await workers.add(max_concurrent_batches=1, max_concurrent_requests_per_batch=1)
        first = await workers.create(requests(200, "a"), via=workers.workers[0])
        await _running(workers, first.id)
        second = await workers.create(requests(200, "b"), via=workers.workers[0])
        await asyncio.sleep(0.2)  # several polls
        assert list(worker.engine.scheduler.runners) == [first.id]
        await workers.workers[0].engine.cancel_batch(second.id)  # cancelled on the API server
        cancelled = await workers.wait(second.id, timeout=5)
        assert cancelled.status == BatchStatus.cancelled
        assert (await worker.engine.retrieve_batch(first.id)).status == BatchStatus.in_progress
        async with asyncio.timeout(2):  # the cancelled batch's runner lets go of it; the first one runs on
            while list(worker.engine.scheduler.runners) != [first.id]:
                await asyncio.sleep(0.005)


async def test_a_stop_gives_the_lease_back_at_once_and_is_not_taken_for_a_lost_lease(
    stack: Stack, fake_backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    fake_backend.latency_s = 0.01
    caplog.set_level(logging.WARNING)
    async with Workers.start(stack, MemoryDatabase(), engine_config(lease_ttl_s=30)) as workers:
        first = await workers.add(max_concurrent_requests_per_batch=2)
        batch = await workers.create(requests(100))
        await _running(workers, batch.id)
        await first.engine.shutdown()
        stopped = time.monotonic()
        second = await workers.add()
        await _running(workers, batch.id)  # long before the 30 s lease would have expired
        assert time.monotonic() - stopped < 2
        done = await workers.wait(batch.id)
    assert done.status == BatchStatus.completed
    assert [lease.epoch for _, lease in second.leases.granted] == [2]
    assert not [r for r in caplog.records if "stops batch" in r.getMessage() or "lost" in r.getMessage()]


async def test_a_renewal_refused_because_another_holder_took_the_lease_stops_the_run_and_says_so(
    stack: Stack, fake_backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    fake_backend.latency_s = 0.01
    caplog.set_level(logging.WARNING)
    ttl = 0.6
    async with Workers.start(stack, MemoryDatabase(), engine_config(lease_ttl_s=ttl)) as workers:
        worker = await workers.add(max_concurrent_requests_per_batch=2)
        batch = await workers.create(requests(300))
        await _running(workers, batch.id)
        [(_, lease)] = worker.leases.granted
        await worker.leases.inner.release(lease)
        thief = await worker.leases.inner.acquire(batch.id, "thief", ttl, time.time())  # and never renews it
        assert thief is not None and thief.epoch == 2
        async with asyncio.timeout(5):
            while batch.id in worker.engine.scheduler.runners and len(worker.leases.granted) == 1:
                await asyncio.sleep(0.005)
        done = await workers.wait(batch.id)  # the thief's lease expires; the worker takes the batch back
    # whichever comes first, the renewal or a fenced checkpoint write, the worker says it lost the batch
    lost = [r.getMessage() for r in caplog.records if batch.id in r.getMessage() and r.levelno == logging.WARNING]
    assert lost and ("another worker has it" in lost[0] or "refused by its fence" in lost[0])
    assert done.status == BatchStatus.completed
    assert [lease.epoch for _, lease in worker.leases.granted] == [1, 3]


async def test_retry_delays_double_with_jitter_up_to_the_cap(stack: Stack) -> None:
    config = engine_config(batch_retry_initial_delay_s=1.0, batch_retry_max_delay_s=10.0)
    async with Workers.start(stack, MemoryDatabase(), config) as workers:
        scheduler = (await workers.add(execute=False)).engine.scheduler
        for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (30, 10.0)]:
            delays = [scheduler.retry_delay(failures) for _ in range(200)]
            assert all(ceiling / 2 <= d <= ceiling for d in delays)
            assert max(delays) - min(delays) > ceiling / 4  # jittered, not in step


async def test_a_failed_run_is_retried_after_its_delay_and_counted_in_the_store(stack: Stack) -> None:
    config = engine_config(batch_retry_initial_delay_s=0.4, batch_retry_max_delay_s=0.4)
    faults = Faults(update=Fault(calls={1}))  # the first write of the first run: validating -> in_progress
    async with Workers.start(stack, MemoryDatabase(), config) as workers:
        worker = await workers.add(table_faults=faults)
        done = await workers.wait((await workers.create(requests(5))).id)
        lease = await worker.leases.current(done.id)
    assert done.status == BatchStatus.completed
    assert lease is not None and (lease.epoch, lease.failures) == (2, 1)
    (first, _), (second, _) = worker.leases.granted
    assert second - first >= 0.2  # not before half the delay


async def test_a_batch_whose_runs_are_used_up_is_failed_when_claimed_without_running_it(
    stack: Stack, fake_backend: FakeBackend
) -> None:
    attempts = 2
    async with Workers.start(stack, MemoryDatabase(), engine_config(max_batch_attempts=attempts)) as workers:
        api = await workers.add(execute=False)
        batch = await workers.create(requests(5))
        for _ in range(attempts):  # two workers died failing it, as the store tells
            lease = await api.leases.acquire(batch.id, "earlier", 1.0, time.time())
            assert lease is not None
            await api.leases.release(lease, failed=True)
        await workers.add()
        done = await workers.wait(batch.id)
    assert done.status == BatchStatus.failed
    assert done.errors is not None and done.errors.data and done.errors.data[0].code == "execution_failed"
    assert fake_backend.total_requests == 0


def test_the_transition_table_has_one_way_out_of_each_active_status_to_every_end() -> None:
    terminal = {BatchStatus.completed, BatchStatus.failed, BatchStatus.expired, BatchStatus.cancelled}
    assert not terminal & set(ALLOWED)  # nothing leaves a terminal status
    assert sources_of(BatchStatus.cancelling) == {
        BatchStatus.validating,
        BatchStatus.in_progress,
        BatchStatus.finalizing,
    }
    assert sources_of(BatchStatus.completed) == {BatchStatus.finalizing}
    assert sources_of(BatchStatus.validating) == set()
    assert all(BatchStatus.failed in targets for targets in ALLOWED.values())  # any run can give up
    assert set(STAMPS) == set(BatchStatus) - {BatchStatus.validating}


async def test_cancel_goes_through_the_table_in_one_write(stack: Stack, fake_backend: FakeBackend) -> None:
    async with Workers.start(stack, MemoryDatabase(), engine_config()) as workers:
        api = await workers.add(execute=False)
        batch = await workers.create(requests(3))
        writes = api.table.faults["update"]
        cancelled = await api.engine.cancel_batch(batch.id)
        again = await api.engine.cancel_batch(batch.id)
        assert (cancelled.status, again.status) == (BatchStatus.cancelling, BatchStatus.cancelling)
        assert writes.count == 2  # one conditional write each; the second one changed nothing
        assert again.cancelling_at == cancelled.cancelling_at
        await workers.add()
        assert (await workers.wait(batch.id)).status == BatchStatus.cancelled
        assert (await api.engine.cancel_batch(batch.id)).status == BatchStatus.cancelled  # cancelling twice is fine
        finished = await workers.wait((await workers.create(requests(3, "x"))).id)
        assert finished.status == BatchStatus.completed
        with pytest.raises(ConflictError, match="'completed'"):
            await api.engine.cancel_batch(finished.id)
