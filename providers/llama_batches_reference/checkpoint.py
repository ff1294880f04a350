"""Group commit of finished requests: results are written in one transaction per flush, and a flush starts as soon
as the previous one ends, so the store sees a handful of commits per second per batch instead of one per request.

A result counts (in the batch's progress) only once it is stored. Dispatch pauses (:meth:`Checkpointer.ready` blocks
the workers) while ``max_pending`` results are not yet stored (waiting or being written), so however slow the
store, the results not yet stored and the requests in flight are fewer than ``max_pending`` plus the window. A
flush that fails is retried with backoff for up to ``store_retry_timeout_s``, dispatch paused meanwhile, so a store
that hiccups costs a pause, not results; one that stays down stops the run, losing only those. A flush refused by
the lease's fence is never retried: another worker has the batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from tenacity import (
    AsyncRetrying,
    retry_if_not_exception_type,
    stop_after_delay,
    stop_when_event_set,
    wait_random_exponential,
)

from llama_batches.storage import Fence, LeaseLost, RequestResult, ResultLog

__all__ = ["Checkpointer"]

logger = logging.getLogger(__name__)

FIRST_RETRY_S = 0.05
LONGEST_RETRY_S = 2.0


class Checkpointer:
    """Collects results and records them in the background, fenced by the runner's lease."""

    def __init__(
        self,
        log: ResultLog,
        owner: str,
        fence: Fence | None,
        *,
        retry_timeout_s: float,
        max_pending: int,
        on_flush: Callable[[Sequence[RequestResult]], Awaitable[None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._log = log
        self._owner = owner
        self._fence = fence
        self._retry_timeout_s = retry_timeout_s
        self._max_pending = max_pending
        self._on_flush = on_flush
        self._sleep = sleep
        self._pending: list[RequestResult] = []
        self._task: asyncio.Task[None] | None = None
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._room = asyncio.Event()
        self._room.set()
        self._flushing: list[RequestResult] = []
        self._hurry = asyncio.Event()
        self._error: BaseException | None = None

    def add(self, result: RequestResult) -> None:
        """Queue ``result``; a flush starts unless one is running. Raises what made flushing give up."""
        if self._error is not None:
            raise self._error
        self._pending.append(result)
        self._check_room()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="checkpoint flush")

    async def ready(self) -> None:
        """Return when the store takes writes (at once, unless a flush is failing); raises what made flushing give
        up. Workers call it before each request, so dispatch pauses while results cannot be stored, or wait in
        numbers for a slow store."""
        await self._room.wait()
        await self._healthy.wait()
        if self._error is not None:
            raise self._error

    def _check_room(self) -> None:
        if len(self._pending) + len(self._flushing) >= self._max_pending:
            self._room.clear()
        else:
            self._room.set()

    def stop_retrying(self) -> None:
        """The run is stopping: a failing flush gets no more attempts after the one under way."""
        self._hurry.set()

    async def close(self) -> None:
        """Record everything queued; raises what made flushing give up."""
        while self._task is not None:
            await asyncio.wait([self._task])
        if self._error is not None:
            raise self._error

    async def _drain(self) -> None:
        try:
            while self._pending:
                self._flushing, self._pending = self._pending, []
                await self._flush(self._flushing)
                self._flushing = []
                self._check_room()
        except BaseException as exc:
            self._error = exc
            self._healthy.set()  # wake the paused workers: ready() raises now
            self._room.set()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._task = None

    async def _flush(self, batch: Sequence[RequestResult]) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_delay(self._retry_timeout_s) | stop_when_event_set(self._hurry),  # type: ignore[arg-type]
            wait=wait_random_exponential(multiplier=FIRST_RETRY_S, max=LONGEST_RETRY_S),
            retry=retry_if_not_exception_type((LeaseLost, asyncio.CancelledError)),
            before_sleep=lambda state: self._pause(batch[0].batch_id),
            sleep=self._sleep,
            reraise=True,
        )
        await retrying(self._log.record, self._owner, batch, fence=self._fence)
        self._healthy.set()
        if self._on_flush is not None:
            await self._on_flush(batch)

    def _pause(self, batch_id: str) -> None:
        if self._healthy.is_set():
            logger.warning("could not record the results of batch %s; dispatch pauses while it retries", batch_id)
        self._healthy.clear()
