"""Errors across the border, both ways.

llama-stack's server turns only its own error classes into HTTP statuses (anything else is a 500), so what the
engine raises is raised again as one of them: a 409 as llama-stack's ``ConflictError``, a 404 as its
``ResourceNotFoundError`` (``BatchNotFoundError`` for a batch), any other status as a ``LlamaStackError`` carrying
that status. The other way, what llama-stack's files, models and inference raise becomes the error of our tree the
engine expects (a missing input file must be our ``NotFoundError`` for the batch to fail with
``input_file_unavailable``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
from llama_stack_api import BatchNotFoundError, ResourceNotFoundError
from llama_stack_api import ConflictError as LlamaStackConflictError
from llama_stack_api.common.errors import LlamaStackError

from llama_batches.errors import (
    APIError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    error_for_status,
)

__all__ = ["LlamaBatchesAPIError", "as_llama_stack_error", "from_llama_stack", "ours"]


class LlamaBatchesAPIError(LlamaStackError):
    """An error of llama-batches with its own HTTP status (400, 413, 429, 503, ...), as llama-stack serves it."""

    def __init__(self, error: APIError) -> None:
        super().__init__(_with_code(error))
        self.status_code = httpx.codes(error.status)
        self.code = error.code
        self.param = error.param


class LlamaBatchesBadRequest(openai.BadRequestError):
    """A 400 of llama-batches, as llama-stack's server answers it cleanly. Its catch-all for other exceptions
    answers and then lets the exception escape to uvicorn, which closes the client's keep-alive connection (the
    client's next request on it fails); ``openai.BadRequestError`` is one of the classes it registers a handler
    for, and that handler serves it as a 400 with its message. It carries no HTTP exchange of its own, so the
    openai base class's initialiser (which wants one) is not called."""

    def __init__(self, error: APIError) -> None:
        Exception.__init__(self, _with_code(error))
        self.message = _with_code(error)
        self.status_code = 400
        self.body = None
        self.code = error.code
        self.param = error.param
        self.type = error.error_type
        self.request_id = None


def _with_code(error: APIError) -> str:
    """The message with the error's code and param after it: llama-stack's server sends only the message, so this is
    where its clients (and its own batches provider, which does the same) read them."""
    parts = [error.message.rstrip()]
    if error.code:
        parts.append(f"Code: {error.code}.")
    if error.param:
        parts.append(f"Param: {error.param}.")
    return " ".join(parts)


def as_llama_stack_error(error: APIError, *, batch_id: str | None = None) -> Exception:
    """``error`` as the llama-stack error class its server maps to the same status."""
    if isinstance(error, ConflictError):
        return LlamaStackConflictError(error.message)
    if isinstance(error, NotFoundError):
        if batch_id is not None and error.param in (None, "batch_id"):
            return BatchNotFoundError(batch_id)
        return _NotFound(error.message)
    if error.status == 400:
        return LlamaBatchesBadRequest(error)
    return LlamaBatchesAPIError(error)


class _NotFound(ResourceNotFoundError):
    """A 404 with llama-batches' own message (which names what is missing)."""

    def __init__(self, message: str) -> None:
        LlamaStackError.__init__(self, message)


def from_llama_stack(error: Exception) -> APIError | None:
    """What the engine should see for an error raised by a llama-stack API, or None to let it through."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, ResourceNotFoundError):
        return NotFoundError(str(error), code="not_found")
    if isinstance(error, LlamaStackError):
        return error_for_status(int(error.status_code), str(error))
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:
        return error_for_status(status, str(error))
    if isinstance(error, ValueError):  # llama-stack's "not found"/"invalid" that predate its error classes
        return InvalidRequestError(str(error))
    return None


@asynccontextmanager
async def ours() -> AsyncIterator[None]:
    """Inside: an error raised by llama-stack is raised as the error of our tree it means."""
    try:
        yield
    except Exception as exc:
        mapped = from_llama_stack(exc)
        if mapped is None or mapped is exc:
            raise
        raise mapped from exc
