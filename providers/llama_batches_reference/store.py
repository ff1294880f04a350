"""Batches in the store, changed only by compare-and-set: no lost update, no resurrecting a cancelled batch."""

from __future__ import annotations

from collections.abc import Callable

from llama_batches.api import Batch, BatchRequestCounts
from llama_batches.api.batches import BatchUsage
from llama_batches.errors import NotFoundError
from llama_batches.storage import ResultTotals, Stored, Table

from .records import BatchRecord

__all__ = ["BatchStore", "counts_from", "usage_from", "with_progress"]


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

    async def update(
        self, owner: str, batch_id: str, change: Callable[[BatchRecord], BatchRecord | None]
    ) -> tuple[BatchRecord, bool]:
        """Apply ``change`` by compare-and-set, retrying on concurrent writes. ``change`` returns None to leave the
        batch as it is. Returns the batch as stored and whether this call changed it."""
        while True:
            stored: Stored[BatchRecord] | None = await self.table.get(owner, batch_id)
            if stored is None:
                raise NotFoundError.for_resource("batch", batch_id, param="batch_id")
            new = change(stored.value)
            if new is None:
                return stored.value, False
            if await self.table.replace(owner, new, expected_version=stored.version, tag=new.status.value):
                return new, True


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
