"""llama-stack's files, models and inference, as the engine's Protocols (:mod:`llama_batches.api`) see them.

llama-stack 0.7.3's APIs take request objects and return FastAPI responses; the engine wants byte streams, a
model lookup and a raw inference path. Each adapter here is the small translation between the two, and raises the
errors of our tree (:func:`.errors.ours`).

Whose call it is: in a request, llama-stack's context already names the authenticated user. In the engine's own
tasks (a batch running, or resumed after a restart) nobody is there, so the adapters tell llama-stack that the
batch's owner acts (:func:`as_owner`), the way llama-stack's access rules expect; with llama-stack's auth off the
owner is ``anonymous`` and no user is set, as llama-stack does itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from fastapi import Response, UploadFile
from llama_stack_api import (
    DeleteFileRequest,
    GetModelRequest,
    InvalidParameterError,
    ListFilesRequest,
    OpenAIFilePurpose,
    RetrieveFileContentRequest,
    RetrieveFileRequest,
    UploadFileRequest,
)
from llama_stack_api import ExpiresAfter as LlamaStackExpiresAfter
from llama_stack_api import Order as LlamaStackOrder
from openai.types import FileDeleted, FileObject

from llama_batches.api import ListModelsResponse, Model, ModelType, Order
from llama_batches.api.files import ExpiresAfter, FilePurpose, ListFilesResponse
from llama_batches.errors import InvalidRequestError, NotFoundError
from llama_batches.principal import ANONYMOUS, current_principal

from .errors import ours

__all__ = ["EngineFiles", "EngineModels", "as_owner"]

SPOOL_IN_MEMORY = 8 * 1024 * 1024
"""An output file up to this size is handed to llama-stack from memory; a larger one from a temporary file."""
CHUNK = 1024 * 1024


@contextmanager
def as_owner() -> Iterator[None]:
    """Inside: llama-stack sees the current principal as its authenticated user, unless a request already set
    one (its attributes and provider data stay) or the principal is ``anonymous`` (llama-stack's auth is off)."""
    from llama_stack.core.datatypes import User
    from llama_stack.core.request_headers import RequestProviderDataContext, get_authenticated_user

    principal = current_principal()
    if get_authenticated_user() is not None or principal == ANONYMOUS:
        yield
        return
    with RequestProviderDataContext(user=User(principal, None)):
        yield


@asynccontextmanager
async def _about(file_id: str) -> AsyncIterator[None]:
    """Inside: llama-stack's errors as ours, and its refusal of an id it could never have issued (its localfs
    checks the shape first and answers 400) as the 404 of a file that does not exist, which it is."""
    try:
        async with ours():
            yield
    except InvalidRequestError as exc:
        if isinstance(exc.__cause__, InvalidParameterError):
            raise NotFoundError.for_resource("file", file_id, param="file_id") from exc
        raise


def _purpose(purpose: FilePurpose) -> OpenAIFilePurpose:
    """llama-stack's purpose for ours: it has ``batch`` and ``assistants`` only, and stores batch output files
    (``batch_output`` at OpenAI) as ``batch``, as its own batches provider does."""
    values = {member.value for member in OpenAIFilePurpose}
    return OpenAIFilePurpose(purpose.value) if purpose.value in values else OpenAIFilePurpose.BATCH


def _file_object(obj: Any) -> FileObject:
    data = obj.model_dump(mode="json")
    return FileObject.model_validate({"status": "processed", **data, "purpose": str(data["purpose"])})


class EngineFiles:
    """llama-stack's Files API as the engine's :class:`llama_batches.api.Files`."""

    def __init__(self, files: Any) -> None:
        self._files = files

    async def openai_upload_file(
        self,
        file: AsyncIterable[bytes],
        purpose: FilePurpose,
        filename: str,
        expires_after: ExpiresAfter | None = None,
    ) -> FileObject:
        """Spool ``file`` (memory up to 8 MiB, then a temporary file) and upload it through llama-stack."""
        expiry = None
        if expires_after is not None:
            expiry = LlamaStackExpiresAfter(anchor="created_at", seconds=expires_after.seconds)
        request = UploadFileRequest(purpose=_purpose(purpose), expires_after=expiry)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            async for chunk in file:
                spool.write(chunk)
            spool.seek(0)
            upload = UploadFile(file=spool, filename=filename)  # type: ignore[arg-type]
            with as_owner():
                async with ours():
                    created = await self._files.openai_upload_file(request, upload)
        return _file_object(created)

    async def openai_list_files(
        self,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = Order.desc,
        purpose: FilePurpose | None = None,
    ) -> ListFilesResponse:
        """A page of the caller's files, from llama-stack."""
        request = ListFilesRequest(
            after=after,
            limit=limit,
            order=LlamaStackOrder(order.value),
            purpose=_purpose(purpose) if purpose is not None else None,
        )
        with as_owner():
            async with ours():
                page = await self._files.openai_list_files(request)
        return ListFilesResponse.of([_file_object(f) for f in page.data], has_more=page.has_more)

    async def openai_retrieve_file(self, file_id: str) -> FileObject:
        """A file's metadata, from llama-stack."""
        with as_owner():
            async with _about(file_id):
                return _file_object(await self._files.openai_retrieve_file(RetrieveFileRequest(file_id=file_id)))

    async def openai_retrieve_file_content(self, file_id: str) -> AsyncIterator[bytes]:
        """The content as chunks: a streaming response streamed, a plain one cut into 1 MiB chunks."""
        with as_owner():
            async with _about(file_id):
                response = await self._files.openai_retrieve_file_content(RetrieveFileContentRequest(file_id=file_id))
        return _chunks(response)

    async def openai_delete_file(self, file_id: str) -> FileDeleted:
        """Delete a file through llama-stack."""
        with as_owner():
            async with _about(file_id):
                deleted = await self._files.openai_delete_file(DeleteFileRequest(file_id=file_id))
        return FileDeleted(id=deleted.id, object="file", deleted=deleted.deleted)


async def _chunks(response: Response) -> AsyncIterator[bytes]:
    iterator = getattr(response, "body_iterator", None)
    if iterator is not None:
        async for chunk in iterator:
            yield chunk if isinstance(chunk, bytes) else str(chunk).encode()
        return
    body = memoryview(bytes(response.body))
    for start in range(0, len(body), CHUNK):
        yield bytes(body[start : start + CHUNK])


def _model(found: Any) -> Model:
    kind = str(getattr(found, "model_type", "llm"))
    return Model(
        identifier=found.identifier,
        provider_id=found.provider_id,
        provider_resource_id=found.provider_resource_id or found.identifier,
        model_type=ModelType.embedding if kind.endswith("embedding") else ModelType.llm,
        metadata=dict(getattr(found, "metadata", None) or {}),
    )


class EngineModels:
    """llama-stack's Models API (its routing table) as the engine's :class:`llama_batches.api.Models`."""

    def __init__(self, models: Any) -> None:
        self._models = models

    async def list_models(self) -> list[Model]:
        """Every model llama-stack has registered."""
        async with ours():
            listed = await self._models.list_models()
        return [_model(m) for m in listed.data]

    async def get_model(self, model_id: str) -> Model:
        """One model; our ``NotFoundError`` when llama-stack has none by that id."""
        async with ours():
            return _model(await self._models.get_model(GetModelRequest(model_id=model_id)))

    async def openai_list_models(self) -> ListModelsResponse:
        """The models in OpenAI's list shape."""
        return ListModelsResponse.of([m.to_openai() for m in await self.list_models()])
