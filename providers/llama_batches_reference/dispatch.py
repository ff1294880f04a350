"""The sliding window: requests of one batch are dispatched as workers free up (never in lockstep chunks), bounded
per batch and over all batches; finished requests are checkpointed by group commit; dispatch stops on cancel or
expiry. Lines that already have a checkpoint are skipped, which is how a resumed batch never re-runs them.

No exception of one request escapes it: whatever goes wrong while handling a line (ours or the backend's) becomes
that line's error result and the worker carries on. Anything else that fails (the input file, the store) stops
the whole dispatch at once, readers and workers together: nothing is left waiting on a queue nobody reads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Coroutine, Sequence
from contextlib import aclosing, suppress
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from llama_batches.api import BatchError, BatchStatus, Endpoint
from llama_batches.errors import NotFoundError, quoted
from llama_batches.storage import Fence, LeaseLost, RequestResult

from .checkpoint import Checkpointer
from .failures import PermanentFailure, describe
from .lines import InputLine, InputTooLarge, iter_lines
from .output import error_result
from .records import BatchRecord
from .validation import parse_line

if TYPE_CHECKING:
    from .runner import EngineParts

__all__ = ["Dispatcher", "StopReason"]

logger = logging.getLogger(__name__)

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
    a reader puts lines on a queue as short as the window, and a worker takes the next one the moment it is free.
    Every store write is made under ``fence``, the runner's lease."""

    def __init__(
        self,
        parts: EngineParts,
        owner: str,
        record: BatchRecord,
        cancel_requested: asyncio.Event,
        fence: Fence | None = None,
    ) -> None:
        self.parts = parts
        self.owner = owner
        self.record = record
        self.cancel_requested = cancel_requested
        self.fence = fence
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
        checkpointer = Checkpointer(
            parts.log,
            self.owner,
            self.fence,
            retry_timeout_s=parts.config.store_retry_timeout_s,
            max_pending=parts.config.max_unrecorded_results,
            on_flush=self._acknowledge,
        )
        try:
            reason = await self._dispatch(done, checkpointer)
        except BaseException:
            checkpointer.stop_retrying()
            with suppress(Exception):  # what stopped the run is the error to report
                await _finish(checkpointer.close())
            raise
        await _finish(checkpointer.close())
        return reason

    async def _dispatch(self, done: set[int], checkpointer: Checkpointer) -> StopReason:
        """The reader in this task, the workers beside it in one task group: if any of them fails, all stop."""
        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(self._work(checkpointer)) for _ in range(self._size)]
                reason = await self._read(done)
                if reason is not StopReason.expired:
                    closing = group.create_task(self._close_queue(drop=reason is not StopReason.done))
                    workers.append(closing)
                reason = await self._wait(workers, reason)
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        if reason is StopReason.done and self.cancel_requested.is_set():
            return StopReason.cancelled  # a cancel after the last line was queued: the workers dropped the rest
        return reason

    async def _read(self, done: set[int]) -> StopReason:
        config, file_id = self.parts.config, self.record.batch.input_file_id
        try:
            stream = await self.parts.files.openai_retrieve_file_content(file_id)
            lines = iter_lines(stream, max_line_bytes=config.max_line_bytes, max_bytes=config.max_input_bytes)
            async with aclosing(lines):
                return await self._feed(lines, done)
        except NotFoundError:
            message = f"The input file {quoted(file_id)} can no longer be read: it was deleted while the batch ran."
            raise PermanentFailure("input_file_unavailable", message, param="input_file_id") from None
        except InputTooLarge:
            message = f"The input file {quoted(file_id)} changed while the batch ran: it is now over the size limit."
            raise PermanentFailure("input_file_unavailable", message, param="input_file_id") from None

    async def _feed(self, lines: AsyncGenerator[InputLine], done: set[int]) -> StopReason:
        async for line in lines:
            if line.number in done:
                continue
            reason = await self._stop_reason()
            if reason is not StopReason.done:
                return reason
            try:
                self._queue.put_nowait(line)
            except asyncio.QueueFull:
                reason = await self._put(line)
                if reason is not StopReason.done:
                    return reason
        return StopReason.done

    async def _put(self, line: InputLine) -> StopReason:
        """Queue ``line`` once a worker is free, looking for a cancel or expiry meanwhile (every worker may be
        waiting minutes on a slow backend)."""
        while True:
            try:
                async with asyncio.timeout(STATUS_POLL_S):
                    await self._queue.put(line)
                return StopReason.done
            except TimeoutError:
                reason = await self._stop_reason()
                if reason is not StopReason.done:
                    return reason

    async def _wait(self, tasks: list[asyncio.Task[None]], reason: StopReason) -> StopReason:
        """Let the workers finish the requests in flight. On expiry they are abandoned at once (OpenAI cancels the
        unfinished requests); on a cancel, made before or while they finish, after ``cancel_grace_s``: a cancel
        stays prompt even when a backend takes minutes to answer."""
        pending = {task for task in tasks if not task.done()}
        while pending and reason is StopReason.done:
            _, pending = await asyncio.wait(pending, timeout=STATUS_POLL_S)
            if pending:
                reason = await self._stop_reason()
        if pending and reason is StopReason.cancelled:
            _, pending = await asyncio.wait(pending, timeout=self.parts.config.cancel_grace_s)
        for task in pending:
            task.cancel()
        return reason

    async def _close_queue(self, *, drop: bool) -> None:
        """Tell every worker to stop; with ``drop``, lines still queued are not sent."""
        if drop:
            self._stopped = True
            while not self._queue.empty():
                self._queue.get_nowait()
        for _ in range(self._size):
            await self._queue.put(None)

    async def _work(self, checkpointer: Checkpointer) -> None:
        while (line := await self._queue.get()) is not None:
            await checkpointer.ready()  # dispatch pauses while results cannot be stored
            async with self.parts.request_slots:
                if self._stopped or self.cancel_requested.is_set():
                    continue
                checkpointer.add(await self._one(line))

    async def _stop_reason(self) -> StopReason:
        if self.cancel_requested.is_set():
            return StopReason.cancelled
        expires_at = self.record.batch.expires_at
        if expires_at is not None and self.parts.clock() >= expires_at:
            return StopReason.expired
        if time.monotonic() - self._last_poll >= STATUS_POLL_S:  # a cancel made by another process
            self._last_poll = time.monotonic()
            try:
                current = await self.parts.store.get(self.owner, self.record.id)
            except Exception as exc:  # a store hiccup delays seeing a cancel; it does not stop the batch
                logger.warning("could not read the status of batch %s: %s", self.record.id, describe(exc))
                return StopReason.done
            if current.status is BatchStatus.cancelling:
                self.cancel_requested.set()
                return StopReason.cancelled
        return StopReason.done

    async def _one(self, line: InputLine) -> RequestResult:
        """The result of one line, whatever happens on the way (only a cancellation goes through)."""
        batch_id, custom_id = self.record.id, ""
        try:
            parsed = parse_line(line.number, line.data, self._endpoint, self.parts.config.max_line_bytes)
            if isinstance(parsed, BatchError):  # the file changed since it was validated
                return error_result(batch_id, line.number, "", parsed.code or "invalid_request", parsed.message or "")
            custom_id = parsed.custom_id
            return await self.parts.executor.execute(batch_id, self._endpoint, parsed)
        except Exception as exc:
            logger.warning("request on line %d of batch %s failed in the engine", line.number, batch_id, exc_info=exc)
            message = f"The request could not be run: {describe(exc)}"
            return error_result(batch_id, line.number, custom_id, "internal_error", message)

    async def _acknowledge(self, flushed: Sequence[RequestResult]) -> None:
        """Count results once stored, and write the live counts to the batch now and then (readers in other
        processes see progress). A failed progress write is not worth stopping for; a fenced one is."""
        for result in flushed:
            if result.ok:
                self.completed += 1
            else:
                self.failed += 1
        if time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = time.monotonic()
        counts = self._counts()
        try:
            await self.parts.store.patch(
                self.owner,
                self.record.id,
                when=(BatchStatus.in_progress, BatchStatus.cancelling),
                fence=self.fence,
                batch={"request_counts": counts},
            )
        except LeaseLost:
            raise
        except Exception as exc:
            logger.warning("could not write the progress of batch %s: %s", self.record.id, describe(exc))

    def _counts(self) -> dict[str, int]:
        total = self.record.batch.request_counts.total if self.record.batch.request_counts else 0
        return {"total": total, "completed": self.completed, "failed": self.failed}
