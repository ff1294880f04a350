"""``/v1/batches``: create (idempotent), list, retrieve, cancel.

Ids and cursors are checked by shape before any provider sees them: an id that no backend can have issued (not
``batch_`` and up to 250 of ``[A-Za-z0-9_-]``) is the same 404 as an id that does not exist, and such a cursor the
same empty page as an unknown one. Strings of the create body that a store cannot hold (NUL, lone surrogates) are a
400 naming the field, whatever the provider.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ..api import Batch, ListBatchesResponse, OutputExpiresAfter
from ..errors import InvalidRequestError, NotFoundError, quoted
from ..idempotency import watch_replay
from ..stack import Stack
from .idempotency import HEADER, resolve_key
from .openapi import IDEMPOTENCY_KEY_DOC, error_responses

__all__ = ["BATCH_ID", "CreateBatchRequest", "check_storable", "create_strings", "known_batch_id", "router"]

router = APIRouter(prefix="/v1/batches", tags=["Batches"])

BATCH_ID = re.compile(r"batch_[A-Za-z0-9_-]{1,250}")
"""The shape of every batch id a backend issues: ``batch_`` + a uuid4 or digest (ours, llama-stack's), OpenAI's."""
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_BatchId = Annotated[
    str,
    Path(
        description="A batch id: batch_ followed by letters, digits, _ or -. Any other string is a 404.",
        json_schema_extra={"pattern": f"^{BATCH_ID.pattern}$"},
    ),
]


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


def create_strings(body: Any) -> Iterator[tuple[str, str]]:
    """Every string of a create body with the param that names it (ours, or any object with those attributes,
    such as llama-stack's ``CreateBatchRequest``)."""
    for name in ("input_file_id", "endpoint", "completion_window", "idempotency_key", "idem_tok"):
        value = getattr(body, name, None)
        if isinstance(value, str):
            yield name, value
    for key, value in (body.metadata or {}).items():
        yield "metadata", key
        if isinstance(value, str):
            yield ("metadata" if len(key) > 64 else f"metadata.{key}"), value


def check_storable(strings: Iterable[tuple[str, str]]) -> None:
    """400 naming the first (param, text) of ``strings`` whose text a store cannot hold (PostgreSQL refuses NUL; no
    UTF-8 column takes a lone surrogate, which JSON's ``\\ud800`` lets through)."""
    for param, text in strings:
        if _UNSTORABLE.search(text):
            message = f"Invalid {quoted(param)}: it holds a NUL character or a lone surrogate."
            raise InvalidRequestError(message, code="invalid_value", param=param)


def known_batch_id(batch_id: str) -> str:
    """``batch_id``, or the 404 every backend gives an unknown id, before any query."""
    if BATCH_ID.fullmatch(batch_id) is None:
        raise NotFoundError.for_resource("batch", batch_id, param="batch_id")
    return batch_id


@router.post(
    "", response_model=Batch, summary="Create a batch", responses=error_responses(404, 409, 429, replayed=True)
)
async def create_batch(
    body: CreateBatchRequest,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias=HEADER, description=IDEMPOTENCY_KEY_DOC)] = None,
) -> Batch:
    """Create a batch; with an idempotency key, a retry gets the same batch (and ``Idempotent-Replayed: true``)."""
    check_storable(create_strings(body))
    key = resolve_key(request.headers.getlist(HEADER), body.idempotency_key, body.idem_tok)
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
    limit: Annotated[int, Query(ge=1, le=100, description="Page size, 1 to 100.")] = 20,
) -> ListBatchesResponse:
    if after is not None and BATCH_ID.fullmatch(after) is None:
        return ListBatchesResponse.of([], has_more=False)  # what an unknown cursor gets
    return await _stack(request).batches.list_batches(after=after, limit=limit)


@router.get("/{batch_id}", response_model=Batch, summary="Retrieve a batch")
async def retrieve_batch(batch_id: _BatchId, request: Request) -> Batch:
    return await _stack(request).batches.retrieve_batch(known_batch_id(batch_id))


@router.post("/{batch_id}/cancel", response_model=Batch, summary="Cancel a batch", responses=error_responses(409))
async def cancel_batch(batch_id: _BatchId, request: Request) -> Batch:
    return await _stack(request).batches.cancel_batch(known_batch_id(batch_id))
