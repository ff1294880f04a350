"""Which process runs which batch: every process with ``execute`` on is a worker that claims active batches with a
lease, renews it by heartbeat while it runs them, and releases it when done. A worker that dies stops renewing;
its lease expires and another worker takes the batch over, resuming from its checkpoints.

A worker claims no more batches than ``max_concurrent_batches``, so the others are left to other workers; a
batch being cancelled is claimed whatever the count, since finishing it is quick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from contextlib import suppress

from llama_batches.api import BatchStatus
from llama_batches.storage import Leases

from .records import ACTIVE_STATUSES
from .runner import BatchRunner, EngineParts

__all__ = ["Scheduler", "worker_id"]

logger = logging.getLogger(__name__)


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
        """Stop claiming, stop the runners and give their leases back, so another worker resumes them at once."""
        self._stopping = True
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self.runners.clear()

    async def _claim_forever(self) -> None:
        config = self.parts.config
        while not self._stopping:
            try:
                await self.claim()
            except Exception:
                logger.exception("worker %s could not look for batches; retrying", self.name)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel that races a wake-up
            with suppress(TimeoutError):
                async with asyncio.timeout(config.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def claim(self) -> None:
        """Claim the active batches this worker has room for, oldest first."""
        config = self.parts.config
        active = await self.parts.store.table.list_tagged([s.value for s in ACTIVE_STATUSES], limit=1000)
        for owner, stored in active:
            batch_id = stored.value.id
            busy = len(self.runners) >= config.max_concurrent_batches
            if batch_id in self.runners or (busy and stored.value.status is not BatchStatus.cancelling):
                continue
            if await self.leases.acquire(batch_id, self.name, config.lease_ttl_s, self._clock()):
                self._start(owner, batch_id)

    def _start(self, owner: str, batch_id: str) -> None:
        runner = BatchRunner(self.parts, owner, batch_id)
        self.runners[batch_id] = runner
        task = asyncio.create_task(self._run(runner), name=f"batch {batch_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, runner: BatchRunner) -> None:
        logger.info("worker %s runs batch %s", self.name, runner.batch_id)
        work = asyncio.create_task(runner.run())
        heartbeat = asyncio.create_task(self._heartbeat(runner.batch_id, work))
        try:
            await work
        except asyncio.CancelledError:
            if not work.cancelled() or heartbeat.done():
                raise
            logger.warning("worker %s lost the lease of batch %s; another worker has it", self.name, runner.batch_id)
        except Exception:
            logger.exception("batch %s stopped on an error; a worker picks it up again", runner.batch_id)
        finally:
            for task in (heartbeat, work):
                task.cancel()
            await asyncio.gather(heartbeat, work, return_exceptions=True)
            self.runners.pop(runner.batch_id, None)
            await self._release(runner.batch_id)

    async def _release(self, batch_id: str) -> None:
        try:
            await asyncio.shield(self.leases.release(batch_id, self.name))
        except Exception:
            logger.exception("could not release the lease of batch %s (it expires by itself)", batch_id)
        self.wake()

    async def _heartbeat(self, batch_id: str, work: asyncio.Task[None]) -> None:
        """Renew the lease every third of its life; stop the work when it is lost."""
        ttl = self.parts.config.lease_ttl_s
        while not work.done():
            await asyncio.sleep(ttl / 3)
            if not await self.leases.renew(batch_id, self.name, ttl, self._clock()):
                work.cancel()
                return
