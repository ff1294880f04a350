"""The one table of allowed status changes of a batch. The engine, cancel and expiry all move a batch through
:meth:`BatchStore.transition <llama_batches_reference.store.BatchStore.transition>`, which applies a change as one
conditional write in the store (the row's status must be an allowed source), so no reader decides what is allowed
on a copy that may be stale.

validating -> in_progress | failed | cancelling | expired
in_progress -> finalizing | cancelling | expired | failed
finalizing -> completed | cancelling | failed
cancelling -> cancelled | failed
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from llama_batches.api import BatchStatus

__all__ = ["ALLOWED", "STAMPS", "sources_of"]

S = BatchStatus

ALLOWED: Mapping[BatchStatus, frozenset[BatchStatus]] = MappingProxyType(
    {
        S.validating: frozenset({S.in_progress, S.failed, S.cancelling, S.expired}),
        S.in_progress: frozenset({S.finalizing, S.cancelling, S.expired, S.failed}),
        S.finalizing: frozenset({S.completed, S.cancelling, S.failed}),
        S.cancelling: frozenset({S.cancelled, S.failed}),
    }
)
"""For each status, the statuses a batch may move to from it. Terminal statuses have no entry."""

STAMPS: Mapping[BatchStatus, str] = MappingProxyType(
    {
        S.in_progress: "in_progress_at",
        S.finalizing: "finalizing_at",
        S.completed: "completed_at",
        S.failed: "failed_at",
        S.expired: "expired_at",
        S.cancelling: "cancelling_at",
        S.cancelled: "cancelled_at",
    }
)
"""The timestamp field set on entering each status."""


def sources_of(target: BatchStatus) -> frozenset[BatchStatus]:
    """The statuses from which a batch may move to ``target``."""
    return frozenset(source for source, targets in ALLOWED.items() if target in targets)
