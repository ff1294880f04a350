"""``inline::reference``: the Batches API implementation (idempotent create, cancel, list) and the runners it
schedules."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from llama_batches.api import (
    Batch,
    BatchRequestCounts,
    BatchStatus,
    Files,
    Inference,
    ListBatchesResponse,
    Models,
    Order,
    OutputExpiresAfter,
)
from llama_batches.errors import ConflictError, InvalidRequestError
from llama_batches.idempotency import mark_replayed, one_key
from llama_batches.principal import current_principal
from llama_batches.storage import ResultLog, Table

from .config import ReferenceBatchesImplConfig
from .executor import RequestExecutor
from .records import ACTIVE_STATUSES, BatchRecord, CreateParams, batch_id_for, window_seconds
from .runner import BatchRunner, EngineParts
from .store import BatchStore, with_progress
from .validation import check_create, check_metadata

__all__ = ["ReferenceBatchesImpl"]

logger = logging.getLogger(__name__)

_CANCELLABLE = frozenset({BatchStatus.validating, BatchStatus.in_progress, BatchStatus.finalizing})


class ReferenceBatchesImpl:
    """The reference batches engine."""

    def __init__(
        self,
        config: ReferenceBatchesImplConfig,
        table: Table[BatchRecord],
        log: ResultLog,
        files: Files,
        models: Models,
        inference: Inference,
        *,
        clock: Callable[[], float] = time.time,
        executor: RequestExecutor | None = None,
    ) -> None:
        self.config = config
        self.store = BatchStore(table)
        self.parts = EngineParts(
            config=config,
            store=self.store,
            log=log,
            files=files,
            models=models,
            executor=executor or RequestExecutor(inference, config),
            clock=clock,
            request_slots=asyncio.Semaphore(config.max_concurrent_requests),
        )
        self._batch_slots = asyncio.Semaphore(config.max_concurrent_batches)
        self._runners: dict[str, BatchRunner] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def initialize(self) -> None:
        """Resume every batch a previous process left unfinished."""
        for owner, stored in await self.store.table.list_tagged([s.value for s in ACTIVE_STATUSES], limit=100_000):
            logger.info("resuming batch %s (%s) of %s", stored.value.id, stored.value.status.value, owner)
            self._start(owner, stored.value.id)

    async def shutdown(self) -> None:
        """Stop every runner; finished requests are checkpointed, so the batches resume on the next start."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._runners.clear()

    def _start(self, owner: str, batch_id: str) -> None:
        if batch_id in self._runners:
            return
        runner = BatchRunner(self.parts, owner, batch_id)
        self._runners[batch_id] = runner
        task = asyncio.create_task(self._run(runner), name=f"batch {batch_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, runner: BatchRunner) -> None:
        try:
            await self._wait_for_slot(runner)
            try:
                await runner.run()
            finally:
                self._batch_slots.release()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batch %s stopped on an error; it resumes on the next start", runner.batch_id)
        finally:
            self._runners.pop(runner.batch_id, None)

    async def _wait_for_slot(self, runner: BatchRunner) -> None:
        """A slot among max_concurrent_batches; a cancelled batch does not wait for one to finish it."""
        if runner.cancel_requested.is_set():
            await self._batch_slots.acquire()
            return
        slot = asyncio.ensure_future(self._batch_slots.acquire())
        cancelled = asyncio.ensure_future(runner.cancel_requested.wait())
        await asyncio.wait({slot, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        cancelled.cancel()
        if not slot.done():
            slot.cancel()
            await self._batch_slots.acquire()  # the finish step is short: take a slot as it frees up

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        output_expires_after: OutputExpiresAfter | None = None,
        *,
        idem_tok: str | None = None,
    ) -> Batch:
        idempotency_key = one_key(idempotency_key, idem_tok)
        check_create(endpoint, completion_window, self.config.completion_windows, idempotency_key)
        check_metadata(metadata)
        params = CreateParams(
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata,
            output_expires_after=output_expires_after,
        )
        owner = current_principal()
        record = self._new_record(owner, params, idempotency_key)
        if await self.store.insert(owner, record):
            self._start(owner, record.id)
            return record.batch
        return await self._replay(owner, record, idempotency_key)

    def _new_record(self, owner: str, params: CreateParams, key: str | None) -> BatchRecord:
        now = int(self.parts.clock())
        batch_id = batch_id_for(owner, key)
        batch = Batch(
            id=batch_id,
            object="batch",
            endpoint=params.endpoint,
            input_file_id=params.input_file_id,
            completion_window=params.completion_window,
            status=BatchStatus.validating.value,
            created_at=now,
            expires_at=now + window_seconds(params.completion_window),
            metadata=params.metadata,
            request_counts=BatchRequestCounts(total=0, completed=0, failed=0),
        )
        return BatchRecord(
            id=batch_id,
            created_at=now,
            batch=batch,
            idempotency_key=key,
            fingerprint=params.fingerprint() if key is not None else None,
            output_expires_after=params.output_expires_after,
        )

    async def _replay(self, owner: str, record: BatchRecord, key: str | None) -> Batch:
        existing = await self.store.get(owner, record.id)
        if existing.fingerprint != record.fingerprint:
            raise ConflictError(
                f"Idempotency key '{key}' was already used to create batch {existing.id} with different parameters. "
                "Use another key to create a different batch.",
                code="idempotency_key_reused",
                param="idempotency_key",
            )
        mark_replayed()
        return await self.retrieve_batch(existing.id)

    async def retrieve_batch(self, batch_id: str) -> Batch:
        record = await self.store.get(current_principal(), batch_id)
        return self._live(record.batch)

    def _live(self, batch: Batch) -> Batch:
        """``batch`` with the counts of its runner in this process, fresher than the stored ones."""
        runner = self._runners.get(batch.id)
        dispatcher = runner.dispatcher if runner is not None else None
        if dispatcher is None or batch.status not in (BatchStatus.in_progress, BatchStatus.cancelling):
            return batch
        return with_progress(batch, dispatcher.completed, dispatcher.failed)

    async def cancel_batch(self, batch_id: str) -> Batch:
        owner = current_principal()
        now = int(self.parts.clock())

        def change(current: BatchRecord) -> BatchRecord | None:
            if current.status in _CANCELLABLE:
                return current.updated(status=BatchStatus.cancelling.value, cancelling_at=now)
            if current.status in (BatchStatus.cancelling, BatchStatus.cancelled):
                return None
            raise ConflictError(f"Cannot cancel a batch with status '{current.status.value}'.")

        record, _ = await self.store.update(owner, batch_id, change)
        runner = self._runners.get(batch_id)
        if runner is not None:
            runner.cancel_requested.set()
        elif record.status is BatchStatus.cancelling:
            self._start(owner, batch_id)  # no runner here (another process, or a past crash): finish it
        return self._live(record.batch)

    async def list_batches(self, after: str | None = None, limit: int = 20) -> ListBatchesResponse:
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100.", code="invalid_value", param="limit")
        page = await self.store.table.list(current_principal(), after=after, limit=limit, order=Order.desc)
        data = [self._live(record.batch) for record in page.items]
        return ListBatchesResponse(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=page.has_more,
        )
