"""The sliding window: requests of one batch are dispatched as workers free up (never in lockstep chunks), bounded
per batch and over all batches; finished requests are checkpointed by group commit; dispatch stops on cancel or
expiry. Lines that already have a checkpoint are skipped, which is how a resumed batch never re-runs them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Coroutine, Sequence
from contextlib import aclosing
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from llama_batches.api import BatchError, BatchStatus, Endpoint
from llama_batches.storage import RequestResult

from .checkpoint import Checkpointer
from .lines import InputLine, iter_lines
from .output import error_result
from .records import BatchRecord
from .store import with_progress
from .validation import ParsedLine, parse_line

if TYPE_CHECKING:
    from .runner import EngineParts

__all__ = ["Dispatcher", "StopReason"]

STATUS_POLL_S = 1.0
PROGRESS_EVERY_S = 0.5


async def _finish(closing: Coroutine[Any, Any, None]) -> None:
    """Await ``closing`` to the end even when this task is cancelled meanwhile (a stop must not cut the last
    checkpoint flush short), then let the cancellation through."""
    task = asyncio.ensure_future(closing)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


class StopReason(StrEnum):
    """Why dispatch ended."""

    done = "done"
    cancelled = "cancelled"
    expired = "expired"


class Dispatcher:
    """Executes the not yet checkpointed requests of one batch with ``max_concurrent_requests_per_batch`` workers:
    a reader puts lines on a queue as short as the window, and a worker takes the next one the moment it is free."""

    def __init__(self, parts: EngineParts, owner: str, record: BatchRecord, cancel_requested: asyncio.Event) -> None:
        self.parts = parts
        self.owner = owner
        self.record = record
        self.cancel_requested = cancel_requested
        self.completed = 0
        self.failed = 0
        self._endpoint = Endpoint(record.batch.endpoint)
        self._size = parts.config.max_concurrent_requests_per_batch
        self._queue: asyncio.Queue[InputLine | None] = asyncio.Queue(maxsize=self._size)
        self._stopped = False
        self._last_poll = time.monotonic()
        self._last_progress = time.monotonic()

    async def run(self) -> StopReason:
        """Dispatch until every request has a result, or until cancel or expiry."""
        parts, batch_id = self.parts, self.record.id
        done = await parts.log.done_lines(batch_id)
        totals = await parts.log.totals(batch_id)
        self.completed, self.failed = totals.completed, totals.failed
        checkpointer = Checkpointer(parts.log, self.owner, on_flush=self._persist_progress)
        workers = [asyncio.create_task(self._work(checkpointer)) for _ in range(self._size)]
        try:
            reason = await self._read(done)
            if reason is StopReason.expired:  # unfinished requests are cancelled, as OpenAI does
                for worker in workers:
                    worker.cancel()
            else:
                await self._close_queue(drop=reason is not StopReason.done)
            await asyncio.gather(*workers, return_exceptions=True)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await _finish(checkpointer.close())
        return reason

    async def _read(self, done: set[int]) -> StopReason:
        config = self.parts.config
        stream = await self.parts.files.openai_retrieve_file_content(self.record.batch.input_file_id)
        lines = iter_lines(stream, max_line_bytes=config.max_line_bytes, max_bytes=config.max_input_bytes)
        async with aclosing(lines):
            return await self._feed(lines, done)

    async def _feed(self, lines: AsyncGenerator[InputLine], done: set[int]) -> StopReason:
        async for line in lines:
            if line.number in done:
                continue
            reason = await self._stop_reason()
            if reason is not StopReason.done:
                return reason
            await self._queue.put(line)
        return StopReason.done

    async def _close_queue(self, *, drop: bool) -> None:
        """Tell every worker to stop; with ``drop``, lines still queued are not sent."""
        if drop:
            self._stopped = True
            while not self._queue.empty():
                self._queue.get_nowait()
        for _ in range(self._size):
            await self._queue.put(None)

    async def _work(self, checkpointer: Checkpointer) -> None:
        max_line_bytes = self.parts.config.max_line_bytes
        while (line := await self._queue.get()) is not None:
            async with self.parts.request_slots:
                if self._stopped or self.cancel_requested.is_set():
                    continue
                parsed = parse_line(line.number, line.data, self._endpoint, max_line_bytes)
                await self._one(parsed, checkpointer)

    async def _stop_reason(self) -> StopReason:
        if self.cancel_requested.is_set():
            return StopReason.cancelled
        expires_at = self.record.batch.expires_at
        if expires_at is not None and self.parts.clock() >= expires_at:
            return StopReason.expired
        if time.monotonic() - self._last_poll >= STATUS_POLL_S:  # a cancel made by another process
            self._last_poll = time.monotonic()
            current = await self.parts.store.get(self.owner, self.record.id)
            if current.status is BatchStatus.cancelling:
                self.cancel_requested.set()
                return StopReason.cancelled
        return StopReason.done

    async def _one(self, parsed: ParsedLine | BatchError, checkpointer: Checkpointer) -> None:
        batch_id = self.record.id
        if isinstance(parsed, BatchError):  # the file changed since it was validated
            number = parsed.line or 0
            result = error_result(batch_id, number, "", parsed.code or "invalid_request", parsed.message or "")
        else:
            result = await self.parts.executor.execute(batch_id, self._endpoint, parsed)
        if result.ok:
            self.completed += 1
        else:
            self.failed += 1
        checkpointer.add(result)

    async def _persist_progress(self, flushed: Sequence[RequestResult]) -> None:
        """Write the live counts to the batch now and then (readers in other processes see progress)."""
        if time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = time.monotonic()
        completed, failed = self.completed, self.failed

        def change(current: BatchRecord) -> BatchRecord | None:
            if current.status not in (BatchStatus.in_progress, BatchStatus.cancelling):
                return None
            return current.model_copy(update={"batch": with_progress(current.batch, completed, failed)})

        await self.parts.store.update(self.owner, self.record.id, change)
