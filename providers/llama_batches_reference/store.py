"""Batches in the store. Every change is one conditional write that the store decides: a status change is allowed
by the table in :mod:`.transitions`, progress is written only while the batch runs, and a runner's writes carry
its lease's fence, so a worker that lost the batch cannot change it."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pydantic_core import to_jsonable_python

from llama_batches.api import Batch, BatchRequestCounts, BatchStatus
from llama_batches.api.batches import BatchUsage
from llama_batches.errors import NotFoundError
from llama_batches.storage import Fence, ResultTotals, Table

from .records import BatchRecord
from .transitions import STAMPS, sources_of

__all__ = ["BatchStore", "counts_from", "usage_from", "with_progress"]


def _tags(statuses: Collection[BatchStatus]) -> list[str]:
    return sorted(status.value for status in statuses)


class BatchStore:
    """The engine's view of the batches table."""

    def __init__(self, table: Table[BatchRecord]) -> None:
        self.table = table

    async def get(self, owner: str, batch_id: str) -> BatchRecord:
        """The batch, or NotFoundError."""
        stored = await self.table.get(owner, batch_id)
        if stored is None:
            raise NotFoundError.for_resource("batch", batch_id, param="batch_id")
        return stored.value

    async def insert(self, owner: str, record: BatchRecord) -> bool:
        """Insert unless the id exists (the atomic claim of an idempotency key)."""
        return await self.table.insert(owner, record, tag=record.status.value)

    async def transition(
        self,
        owner: str,
        batch_id: str,
        target: BatchStatus,
        now: int,
        *,
        source: BatchStatus | None = None,
        fence: Fence | None = None,
        **fields: Any,
    ) -> BatchRecord | None:
        """Move the batch to ``target`` (stamping its ``*_at`` with ``now`` and setting ``fields`` of the batch
        object) if its status is an allowed source of ``target`` (and is ``source``, when given). One conditional
        write; the batch as stored after it, or None when its status did not allow the change."""
        allowed = sources_of(target) & ({source} if source is not None else set(BatchStatus))
        if not allowed:
            raise ValueError(f"a batch never goes from {source} to {target}")
        changes = {"batch": {"status": target.value, STAMPS[target]: now, **to_jsonable_python(fields)}}
        stored = await self.table.update(
            owner, batch_id, changes, when_tags=_tags(allowed), tag=target.value, fence=fence
        )
        return stored.value if stored is not None else None

    async def patch(
        self,
        owner: str,
        batch_id: str,
        *,
        when: Collection[BatchStatus],
        fence: Fence | None = None,
        batch: dict[str, Any] | None = None,
        record: dict[str, Any] | None = None,
    ) -> BatchRecord | None:
        """Set fields of the batch object (``batch``) and of the record (``record``) while the status is one of
        ``when``, keeping the status. One conditional write; the batch as stored, or None."""
        changes: dict[str, Any] = to_jsonable_python(record or {})
        if batch:
            changes["batch"] = to_jsonable_python(batch)
        stored = await self.table.update(owner, batch_id, changes, when_tags=_tags(when), fence=fence)
        return stored.value if stored is not None else None


def counts_from(total: int, totals: ResultTotals) -> BatchRequestCounts:
    """request_counts for a batch of ``total`` requests."""
    return BatchRequestCounts(total=total, completed=totals.completed, failed=totals.failed)


def usage_from(totals: ResultTotals) -> BatchUsage:
    """The batch's usage: token sums of its results."""
    return BatchUsage(
        input_tokens=totals.input_tokens,
        input_tokens_details={"cached_tokens": totals.cached_tokens},
        output_tokens=totals.output_tokens,
        output_tokens_details={"reasoning_tokens": totals.reasoning_tokens},
        total_tokens=totals.input_tokens + totals.output_tokens,
    )


def with_progress(batch: Batch, completed: int, failed: int) -> Batch:
    """``batch`` with live counts."""
    counts = batch.request_counts or BatchRequestCounts(total=0, completed=0, failed=0)
    return batch.model_copy(
        update={"request_counts": counts.model_copy(update={"completed": completed, "failed": failed})}
    )
