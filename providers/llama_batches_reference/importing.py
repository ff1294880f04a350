"""Batches imported from elsewhere (``llama-batches import-llama-stack``): stored as they are, ids kept.

An imported batch has no idempotency key of ours (the other system's key is unknown: only a digest of it may be in
the id), so a create that replays that key makes a new batch. One in an active status is the engine's to run, like a
batch of its own: the scheduler claims it (a ``validating`` one is validated and run from its first line).
"""

from __future__ import annotations

from llama_batches.api import Batch

from .records import BatchRecord
from .store import BatchStore

__all__ = ["BatchImport"]


class BatchImport:
    """Mixin of :class:`~.batches.ReferenceBatchesImpl`, implementing
    :class:`llama_batches.api.importing.BatchImporter`."""

    store: BatchStore

    async def batch_exists(self, batch_id: str, owner: str) -> bool:
        return await self.store.table.get(owner, batch_id) is not None

    async def import_batch(self, batch: Batch, owner: str) -> bool:
        return await self.store.insert(owner, BatchRecord(id=batch.id, created_at=batch.created_at, batch=batch))
