"""Which process runs which batch: every process with ``execute`` on is a worker that claims active batches with a
lease, renews it by heartbeat while it runs them, and releases it when done. A worker that dies stops renewing;
its lease expires and another worker takes the batch over, resuming from its checkpoints.

A lease carries an epoch (fencing token) and every write of a run is conditional on it, so a worker that lost its
lease (paused, partitioned, or its renewal failed) cannot change the batch. A heartbeat that fails, raises or hangs
stops its run within one heartbeat period.

A run that stops on an error gives its lease back with a delay (exponential backoff with jitter) and one more
failure counted on the lease row, which every worker sees; the run that meets the ``max_batch_attempts``-th error
fails the batch. A worker claims no more batches than ``max_concurrent_batches``; a batch being cancelled is
claimed whatever the count, since finishing it is quick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from contextlib import suppress

from llama_batches.api import BatchStatus
from llama_batches.storage import Lease, LeaseLost, Leases

from .failures import describe
from .runner import BatchRunner, EngineParts, RunOutcome, Stop

__all__ = ["Scheduler", "worker_id"]

logger = logging.getLogger(__name__)

_RUNNABLE = sorted(s.value for s in (BatchStatus.validating, BatchStatus.in_progress, BatchStatus.finalizing))
_CANCELLING = [BatchStatus.cancelling.value]
CANCELLING_PER_CLAIM = 100


def worker_id() -> str:
    """A name for this process among the workers: host, pid and a random tail."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Scheduler:
    """Claims, runs and releases batches for one engine."""

    def __init__(self, parts: EngineParts, leases: Leases, *, name: str | None = None) -> None:
        self.parts = parts
        self.leases = leases
        self.name = name or worker_id()
        self.runners: dict[str, BatchRunner] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def _clock(self) -> Callable[[], float]:
        return self.parts.clock

    def start(self) -> None:
        """Start claiming batches."""
        self._loop = asyncio.create_task(self._claim_forever(), name=f"scheduler {self.name}")

    def wake(self) -> None:
        """Look for work now (a batch was created or cancelled here)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming, stop the runners and give their leases back, so another worker resumes them at once. A
        run still writing its last results after ``lease_ttl_s`` (a store that hangs) is left behind: its lease
        expires and another worker re-runs what it had not recorded."""
        self._stopping = True
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        _, lingering = await asyncio.wait(tasks, timeout=self.parts.config.lease_ttl_s) if tasks else ((), ())
        if lingering:
            logger.warning("worker %s stopped with %d runs still writing", self.name, len(lingering))
        self._tasks.clear()
        self.runners.clear()

    async def _claim_forever(self) -> None:
        config = self.parts.config
        while not self._stopping:
            try:
                await self.claim()
            except Exception as exc:
                logger.warning("worker %s could not look for batches (%s); retrying", self.name, describe(exc))
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that races a wake-up
            with suppress(TimeoutError):
                async with asyncio.timeout(config.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def claim(self) -> None:
        """Claim the active batches this worker has room for, oldest first, and every batch being cancelled."""
        config, table = self.parts.config, self.parts.store.table
        room = config.max_concurrent_batches - len(self.runners)
        wanted = [(_CANCELLING, CANCELLING_PER_CLAIM)] + ([(_RUNNABLE, room)] if room > 0 else [])
        for tags, limit in wanted:
            claimed = await self.leases.claim(table, tags, self.name, config.lease_ttl_s, self._clock(), limit=limit)
            for owner, lease in claimed:
                self._start(owner, lease)

    def _start(self, owner: str, lease: Lease) -> None:
        runner = BatchRunner(self.parts, owner, lease.key, lease, self.leases.fence(lease))
        self.runners[lease.key] = runner
        task = asyncio.create_task(self._run(runner), name=f"batch {lease.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, runner: BatchRunner) -> None:
        logger.info("worker %s runs batch %s (epoch %d)", self.name, runner.batch_id, runner.lease.epoch)
        work = asyncio.create_task(runner.run())
        heartbeat = asyncio.create_task(self._heartbeat(runner, work))
        failed = False
        try:
            failed = await work is RunOutcome.retry
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if runner.stopped_by is None or (current is not None and current.cancelling()):
                raise  # a stop
            failed = runner.stopped_by is Stop.renewal_failed  # a store that keeps failing must not loop for ever
        except LeaseLost:
            logger.warning("worker %s lost batch %s: a write was refused by its fence", self.name, runner.batch_id)
        except Exception as exc:
            logger.warning("batch %s: failing it failed (%s); it runs again later", runner.batch_id, describe(exc))
            failed = True
        finally:
            for task in (heartbeat, work):
                task.cancel()
            await asyncio.gather(heartbeat, work, return_exceptions=True)
            if self.runners.get(runner.batch_id) is runner:  # not a newer run of the same batch, claimed meanwhile
                del self.runners[runner.batch_id]
            await self._release(runner.lease, failed)

    def retry_delay(self, failures: int) -> float:
        """How long a batch waits after its ``failures``-th failed run: doubling from the initial delay, capped,
        with jitter (between half and all of it) so that failed batches do not come back in step."""
        config = self.parts.config
        ceiling = min(config.batch_retry_max_delay_s, config.batch_retry_initial_delay_s * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _release(self, lease: Lease, failed: bool) -> None:
        until = self._clock() + self.retry_delay(lease.failures + 1) if failed else 0.0
        try:
            await asyncio.shield(self.leases.release(lease, until=until, failed=failed))
        except Exception as exc:
            logger.warning("could not release batch %s (its lease expires by itself): %s", lease.key, describe(exc))
        self.wake()

    async def _heartbeat(self, runner: BatchRunner, work: asyncio.Task[RunOutcome]) -> None:
        """Renew the lease every third of its life; stop the run when a renewal is refused, fails or hangs."""
        ttl = self.parts.config.lease_ttl_s
        period = ttl / 3
        while not work.done():
            await asyncio.sleep(period)
            try:
                async with asyncio.timeout(period):
                    kept = await self.leases.renew(runner.lease, ttl, self._clock())
                stop, problem = Stop.lease_taken, "another worker has it"
            except Exception as exc:
                kept, stop, problem = False, Stop.renewal_failed, f"its renewal failed: {describe(exc)}"
            if not kept:
                logger.warning("worker %s stops batch %s: %s", self.name, runner.batch_id, problem)
                runner.stopped_by = stop
                work.cancel()
                return
