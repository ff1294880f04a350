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
from llama_batches.errors import ConflictError, InvalidRequestError, RateLimitedError
from llama_batches.idempotency import IdempotentCreate, mark_replayed, one_key
from llama_batches.principal import current_principal
from llama_batches.storage import Leases, ResultLog, Table

from .config import ReferenceBatchesImplConfig
from .executor import RequestExecutor
from .importing import BatchImport
from .records import ACTIVE_STATUSES, BatchRecord, CreateParams, batch_id_for, window_seconds
from .runner import EngineParts
from .scheduler import Scheduler
from .store import BatchStore, with_progress
from .validation import check_create, check_metadata

__all__ = ["ReferenceBatchesImpl"]

logger = logging.getLogger(__name__)


class ReferenceBatchesImpl(BatchImport):
    """The reference batches engine."""

    def __init__(
        self,
        config: ReferenceBatchesImplConfig,
        table: Table[BatchRecord],
        log: ResultLog,
        leases: Leases,
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
        self.scheduler = Scheduler(self.parts, leases)

    async def initialize(self) -> None:
        """Start working (when ``execute`` is on): claim the batches no live worker holds, including those a
        previous process left unfinished."""
        if self.config.execute:
            await self.scheduler.claim()
            self.scheduler.start()

    async def shutdown(self) -> None:
        """Stop the runners and release their leases; finished requests are checkpointed, so the batches resume
        wherever a worker runs next."""
        await self.scheduler.stop()

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
        if idempotency_key is not None and await self.store.table.get(owner, record.id) is not None:
            return await self._replay(owner, record, idempotency_key)  # a replay is never refused
        await self._check_in_flight(owner)
        if await self.store.insert(owner, record):
            self.scheduler.wake()
            return record.batch
        return await self._replay(owner, record, idempotency_key)

    async def _check_in_flight(self, owner: str) -> None:
        """429 when ``owner`` has max_batches_in_flight_per_principal batches running (counted in the store, so
        every server agrees; a soft limit: racing creates may overshoot by their number)."""
        limit = self.config.max_batches_in_flight_per_principal
        if limit is None:
            return
        running = 0
        for status in ACTIVE_STATUSES:
            running += len((await self.store.table.list(owner, limit=limit, tag=status.value)).items)
        if running >= limit:
            raise RateLimitedError(
                f"You already have {running} batches in flight (the limit is {limit}); try again when one ends.",
                code="too_many_batches_in_flight",
                retry_after=self.config.in_flight_retry_after_s,
            )

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
            fingerprint=IdempotentCreate.of(owner, key, params.model_dump(mode="json")).fingerprint
            if key is not None
            else None,
            output_expires_after=params.output_expires_after,
        )

    async def _replay(self, owner: str, record: BatchRecord, key: str | None) -> Batch:
        existing = await self.store.get(owner, record.id)
        IdempotentCreate(owner, key or "", record.fingerprint or "").check(existing.fingerprint, existing.id)
        mark_replayed()
        return await self.retrieve_batch(existing.id)

    async def retrieve_batch(self, batch_id: str) -> Batch:
        record = await self.store.get(current_principal(), batch_id)
        return self._live(record.batch)

    def _live(self, batch: Batch) -> Batch:
        """``batch`` with the counts of its runner in this process, fresher than the stored ones."""
        runner = self.scheduler.runners.get(batch.id)
        dispatcher = runner.dispatcher if runner is not None else None
        if dispatcher is None or batch.status not in (BatchStatus.in_progress, BatchStatus.cancelling):
            return batch
        return with_progress(batch, dispatcher.completed, dispatcher.failed)

    async def cancel_batch(self, batch_id: str) -> Batch:
        owner = current_principal()
        moved = await self.store.transition(owner, batch_id, BatchStatus.cancelling, int(self.parts.clock()))
        record = moved or await self.store.get(owner, batch_id)
        if moved is None and record.status not in (BatchStatus.cancelling, BatchStatus.cancelled):
            raise ConflictError(f"Cannot cancel a batch with status '{record.status.value}'.", param="batch_id")
        runner = self.scheduler.runners.get(batch_id)
        if runner is not None:
            runner.cancel_requested.set()
        else:  # the worker running it (if any) sees the status within a second; otherwise a worker here claims it
            self.scheduler.wake()
        return self._live(record.batch)

    async def list_batches(self, after: str | None = None, limit: int = 20) -> ListBatchesResponse:
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100.", code="invalid_value", param="limit")
        page = await self.store.table.list(current_principal(), after=after, limit=limit, order=Order.desc)
        data = [self._live(record.batch) for record in page.items]
        return ListBatchesResponse.of(data, has_more=page.has_more)
