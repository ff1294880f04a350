"""``/v1/batches``: create (idempotent), list, retrieve, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ..api import Batch, ListBatchesResponse, OutputExpiresAfter
from ..idempotency import watch_replay
from ..stack import Stack
from .idempotency import resolve_key

__all__ = ["CreateBatchRequest", "router"]

router = APIRouter(prefix="/v1/batches", tags=["Batches"])


class CreateBatchRequest(BaseModel):
    """The body of ``POST /v1/batches``: OpenAI's fields plus the idempotency key."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(description="A file uploaded with purpose 'batch'.")
    endpoint: str = Field(description="/v1/chat/completions, /v1/completions or /v1/embeddings.")
    completion_window: str = Field(description="How long the batch may take: '24h'.")
    metadata: dict[str, Any] | None = Field(default=None, description="Up to 16 string pairs.")
    output_expires_after: OutputExpiresAfter | None = None
    idempotency_key: str | None = Field(
        default=None, description="Same key and parameters give back the same batch; other parameters a 409."
    )
    idem_tok: str | None = Field(default=None, description="Alias of idempotency_key.")


def _stack(request: Request) -> Stack:
    stack: Stack = request.app.state.stack
    return stack


@router.post("", response_model=Batch, summary="Create a batch")
async def create_batch(
    body: CreateBatchRequest,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Batch:
    """Create a batch; with an idempotency key, a retry gets the same batch (and ``Idempotent-Replayed: true``)."""
    key = resolve_key(idempotency_key, body.idempotency_key, body.idem_tok)
    with watch_replay() as replayed:
        batch = await _stack(request).batches.create_batch(
            body.input_file_id,
            body.endpoint,
            body.completion_window,
            body.metadata,  # the provider names a value that is not a string
            idempotency_key=key,
            output_expires_after=body.output_expires_after,
        )
        if replayed():
            response.headers["Idempotent-Replayed"] = "true"
    return batch


@router.get("", response_model=ListBatchesResponse, summary="List batches, newest first")
async def list_batches(
    request: Request,
    after: Annotated[str | None, Query(description="A batch id: the page starts after it.")] = None,
    limit: Annotated[int, Query(description="Page size, 1 to 100.")] = 20,
) -> ListBatchesResponse:
    return await _stack(request).batches.list_batches(after=after, limit=limit)


@router.get("/{batch_id}", response_model=Batch, summary="Retrieve a batch")
async def retrieve_batch(batch_id: str, request: Request) -> Batch:
    return await _stack(request).batches.retrieve_batch(batch_id)


@router.post("/{batch_id}/cancel", response_model=Batch, summary="Cancel a batch")
async def cancel_batch(batch_id: str, request: Request) -> Batch:
    return await _stack(request).batches.cancel_batch(batch_id)
