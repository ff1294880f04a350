"""One run of one batch, under a lease: validate, execute, finalize. Every step starts from what the store says, so
a run started after a crash picks up where the last one stopped, and every write carries the lease's fence, so a
run whose lease passed to another worker cannot change the batch.

validating -> (failed | in_progress) -> (finalizing -> completed | expired | cancelling -> cancelled)

A run ends in one of three ways (:class:`RunOutcome`): the batch reached a terminal status (or is someone else's
now); it failed for good (a permanent condition, or its ``max_batch_attempts``-th error: the batch is ``failed``
with the reason, its partial results in its files); or it stopped on an error that another run may not meet, which
the scheduler retries after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from llama_batches.api import BatchError, BatchStatus, Files, Models
from llama_batches.api.batches import BatchErrors
from llama_batches.principal import acting_as
from llama_batches.storage import Fence, Lease, LeaseLost, ResultLog, ResultTotals

from .config import ReferenceBatchesImplConfig
from .dispatch import Dispatcher, StopReason
from .executor import RequestExecutor
from .failures import InvariantViolation, PermanentFailure, describe
from .finish import Finisher
from .records import ACTIVE_STATUSES, BatchRecord
from .scan import scan
from .store import BatchStore, counts_from

__all__ = ["BatchRunner", "EngineParts", "RunOutcome"]

logger = logging.getLogger(__name__)
MAX_STEPS = 32  # a batch has at most five statuses ahead of it; more steps than this means none is taking


@dataclass
class EngineParts:
    """What every runner of one engine shares."""

    config: ReferenceBatchesImplConfig
    store: BatchStore
    log: ResultLog
    files: Files
    models: Models
    executor: RequestExecutor
    clock: Callable[[], float]
    request_slots: asyncio.Semaphore


class RunOutcome(StrEnum):
    """How a run ended."""

    ended = "ended"
    """The batch is terminal (this run ended it, or found it so), or it is no longer this run's to change."""
    retry = "retry"
    """The run stopped on an error; the batch runs again after a backoff."""


class Stop(StrEnum):
    """Why the heartbeat stopped a run."""

    lease_taken = "lease_taken"
    """Another worker holds the batch now."""
    renewal_failed = "renewal_failed"
    """The renewal raised or hung: the store cannot be reached (counted as a failed run)."""


class BatchRunner:
    """Drives one batch towards a terminal status while holding ``lease``."""

    def __init__(self, parts: EngineParts, owner: str, batch_id: str, lease: Lease, fence: Fence | None) -> None:
        self.parts = parts
        self.owner = owner
        self.batch_id = batch_id
        self.lease = lease
        self.fence = fence
        self.cancel_requested = asyncio.Event()
        self.dispatcher: Dispatcher | None = None
        self.stopped_by: Stop | None = None
        """Set by the heartbeat when it stops this run."""
        self.error: str | None = None
        """Why the run stopped, when it stopped on an error."""
        self._finisher = Finisher(parts, owner, fence)

    def _now(self) -> int:
        return int(self.parts.clock())

    async def run(self) -> RunOutcome:
        """Take the batch through its remaining steps; see :class:`RunOutcome`. Raises LeaseLost when a write was
        refused by the fence, and whatever failed while failing the batch (the scheduler retries that too)."""
        attempts = self.parts.config.max_batch_attempts
        with acting_as(self.owner):
            if self.lease.failures >= attempts:  # runs failed, or their workers died holding the batch
                await self._give_up(None)
                return RunOutcome.ended
            try:
                await self._steps()
            except PermanentFailure as failure:
                await self._give_up(BatchError(code=failure.code, message=failure.message, param=failure.param))
            except (LeaseLost, asyncio.CancelledError):
                raise
            except Exception as exc:
                return await self._stopped_on(exc)
        return RunOutcome.ended

    async def _stopped_on(self, exc: Exception) -> RunOutcome:
        failures = self.lease.failures + 1
        self.error = describe(exc)
        attempts = self.parts.config.max_batch_attempts
        logger.warning("batch %s stopped on an error (run %d of %d)", self.batch_id, failures, attempts, exc_info=exc)
        if failures >= attempts:
            await self._give_up(self._exhausted(failures, self.error))
            return RunOutcome.ended
        try:  # so that whoever gives up on the batch can say why
            await self.parts.store.patch(
                self.owner, self.batch_id, when=ACTIVE_STATUSES, fence=self.fence, record={"last_error": self.error}
            )
        except LeaseLost:
            raise
        except Exception as note_error:
            logger.warning("could not note the error of batch %s: %s", self.batch_id, describe(note_error))
        return RunOutcome.retry

    def _exhausted(self, failures: int, reason: str | None) -> BatchError:
        message = (
            f"The batch was given up after {failures} failed runs (runs that stopped on an error, or whose "
            "worker died or lost the store while running it)."
        )
        if reason:
            message += f" The last error: {reason}"
        return BatchError(code="execution_failed", message=message, param=None, line=None)

    async def _give_up(self, error: BatchError | None) -> None:
        """Fail the batch with ``error`` (None: its runs are used up, for the reason the store noted)."""
        record = await self.parts.store.get(self.owner, self.batch_id)
        if record.status not in ACTIVE_STATUSES:
            return
        if error is None:
            error = self._exhausted(self.lease.failures, record.last_error)
        logger.warning("batch %s fails: %s", self.batch_id, error.message)
        await self._finisher.give_up(record, error)

    async def _steps(self) -> None:
        for _ in range(MAX_STEPS):
            record = await self.parts.store.get(self.owner, self.batch_id)
            status = record.status
            if status in (BatchStatus.validating, BatchStatus.in_progress) and self._expired(record):
                await self._finisher.finish(record, BatchStatus.expired)
            elif status is BatchStatus.validating:
                await self._validate(record)
            elif status is BatchStatus.in_progress:
                await self._execute(record)
            elif status is BatchStatus.finalizing:
                await self._finisher.finish(record, BatchStatus.completed)
            elif status is BatchStatus.cancelling:
                await self._finisher.finish(record, BatchStatus.cancelled)
            else:
                return
        raise InvariantViolation(f"batch {self.batch_id} did not reach a terminal status in {MAX_STEPS} steps")

    def _expired(self, record: BatchRecord) -> bool:
        expires_at = record.batch.expires_at
        return expires_at is not None and self.parts.clock() >= expires_at

    async def _validate(self, record: BatchRecord) -> None:
        found = await scan(self.parts, record)
        store, now = self.parts.store, self._now()
        if found.errors:
            errors = BatchErrors(object="list", data=found.errors)
            await store.transition(
                self.owner,
                record.id,
                BatchStatus.failed,
                now,
                source=BatchStatus.validating,
                fence=self.fence,
                errors=errors,
            )
            return
        await store.transition(
            self.owner,
            record.id,
            BatchStatus.in_progress,
            now,
            source=BatchStatus.validating,
            fence=self.fence,
            model=found.model,
            request_counts=counts_from(found.total, ResultTotals()),
        )

    async def _execute(self, record: BatchRecord) -> None:
        dispatcher = Dispatcher(self.parts, self.owner, record, self.cancel_requested, self.fence)
        self.dispatcher = dispatcher
        try:
            reason = await dispatcher.run()
        finally:
            self.dispatcher = None
        if reason is StopReason.done:
            totals = await self.parts.log.totals(record.id)
            total = record.batch.request_counts.total if record.batch.request_counts else 0
            if totals.completed + totals.failed != total:
                raise InvariantViolation(f"{totals.completed + totals.failed} of {total} requests have a result")
            await self.parts.store.transition(
                self.owner,
                record.id,
                BatchStatus.finalizing,
                self._now(),
                source=BatchStatus.in_progress,
                fence=self.fence,
            )
        elif reason is StopReason.expired:
            await self._finisher.finish(await self.parts.store.get(self.owner, record.id), BatchStatus.expired)
        # cancelled: the batch is `cancelling` in the store; the next step finishes it
