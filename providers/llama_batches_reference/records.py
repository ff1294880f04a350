"""What the engine stores about a batch, and how idempotent creation identifies it."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel

from llama_batches.api import Batch, BatchStatus, OutputExpiresAfter
from llama_batches.idempotency import fingerprint, scoped_key

__all__ = ["ACTIVE_STATUSES", "BatchRecord", "CreateParams", "batch_id_for", "window_seconds"]

ACTIVE_STATUSES = (
    BatchStatus.validating,
    BatchStatus.in_progress,
    BatchStatus.finalizing,
    BatchStatus.cancelling,
)


class CreateParams(BaseModel):
    """The parameters of a create call that an idempotency key is bound to."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    output_expires_after: OutputExpiresAfter | None

    def fingerprint(self) -> str:
        """What an idempotency key binds: :func:`llama_batches.idempotency.fingerprint` of these parameters."""
        return fingerprint(self.model_dump(mode="json"))


class BatchRecord(BaseModel):
    """A stored batch: the OpenAI object plus what the engine needs to replay and resume it."""

    id: str
    created_at: int
    batch: Batch
    idempotency_key: str | None = None
    fingerprint: str | None = None
    output_expires_after: OutputExpiresAfter | None = None
    last_error: str | None = None
    """Why the last run of this batch stopped on an error (kept for the message of a batch that gives up)."""

    @property
    def status(self) -> BatchStatus:
        """The batch's status."""
        return BatchStatus(self.batch.status)

    def updated(self, **changes: Any) -> BatchRecord:
        """A copy whose batch has ``changes`` applied."""
        return self.model_copy(update={"batch": self.batch.model_copy(update=changes)})


def batch_id_for(owner: str, idempotency_key: str | None) -> str:
    """A new random id; or, for a key, the id every create with (owner, key) agrees on without asking anyone."""
    if idempotency_key is None:
        return f"batch_{uuid.uuid4().hex}"
    return f"batch_{scoped_key(owner, idempotency_key)[:32]}"  # IdempotentCreate.scope, shortened


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> int:
    """``24h`` as 86400 (units s, m, h, d)."""
    return int(window[:-1]) * _UNITS[window[-1]]
