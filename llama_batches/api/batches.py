"""The Batches API: OpenAI's ``/v1/batches`` with idempotent creation.

Wire models are the openai SDK's own (``openai.types.Batch``), so what a provider returns is exactly what the
SDK parses.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable

from openai.types import Batch, BatchError, BatchRequestCounts, BatchUsage
from openai.types.batch import Errors as BatchErrors
from pydantic import BaseModel, Field

from .common import Endpoint, ListResponse

BatchEndpoint = Endpoint
"""The endpoints a batch can target: the inference endpoints llama-batches serves."""

__all__ = [
    "TERMINAL_BATCH_STATUSES",
    "Batch",
    "BatchEndpoint",
    "BatchError",
    "BatchErrors",
    "BatchRequestCounts",
    "BatchStatus",
    "BatchUsage",
    "Batches",
    "ListBatchesResponse",
    "OutputExpiresAfter",
]


class BatchStatus(StrEnum):
    """The lifecycle of a batch, exactly as OpenAI names it."""

    validating = "validating"
    failed = "failed"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    expired = "expired"
    cancelling = "cancelling"
    cancelled = "cancelled"


TERMINAL_BATCH_STATUSES = frozenset(
    {BatchStatus.completed, BatchStatus.failed, BatchStatus.expired, BatchStatus.cancelled}
)


class OutputExpiresAfter(BaseModel):
    """When the output and error files of a batch expire, counted from the output file's creation."""

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(ge=3600, le=2_592_000)


class ListBatchesResponse(ListResponse[Batch]):
    """A page of batches, newest first."""


@runtime_checkable
class Batches(Protocol):
    """Create, inspect and cancel batches of requests that run asynchronously.

    Extensions over OpenAI: ``idempotency_key`` makes creation safe to retry. The same key with the same
    parameters returns the same batch; the same key with different parameters raises ``ConflictError``.
    """

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        output_expires_after: OutputExpiresAfter | None = None,
    ) -> Batch:
        """Create a batch from an uploaded JSONL file.

        :param input_file_id: id of a file uploaded with purpose ``batch``.
        :param endpoint: the endpoint every request line targets, e.g. ``/v1/chat/completions``.
        :param completion_window: how long the batch may take; ``24h``.
        :param metadata: up to 16 string pairs kept with the batch.
        :param idempotency_key: makes the creation idempotent within the caller's scope.
        :param output_expires_after: expiry of the output and error files.
        :returns: the new batch, or the existing one for a replayed idempotency key.
        """
        ...

    async def retrieve_batch(self, batch_id: str) -> Batch:
        """Return a batch.

        :param batch_id: the batch's id.
        :raises NotFoundError: no such batch for this caller.
        """
        ...

    async def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel a batch: dispatch stops, finished results are kept.

        :param batch_id: the batch's id.
        :raises ConflictError: the batch already finished.
        """
        ...

    async def list_batches(self, after: str | None = None, limit: int = 20) -> ListBatchesResponse:
        """List the caller's batches, newest first.

        :param after: a batch id; the page starts after it.
        :param limit: page size, 1 to 100.
        """
        ...
