"""``/v1/files`` and ``/v1/models``: uploads parsed while they stream, content streamed back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ..api import ExpiresAfter, FileDeleted, FileObject, FilePurpose, ListFilesResponse, ListModelsResponse, Order
from ..api.models import OpenAIModel
from ..errors import InvalidRequestError, quoted
from ..stack import Stack
from .jsonl import checked_jsonl
from .uploads import StreamingForm, spool

__all__ = ["files_router", "models_router"]

files_router = APIRouter(prefix="/v1/files", tags=["Files"])
models_router = APIRouter(prefix="/v1/models", tags=["Models"])

_UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": [p.value for p in FilePurpose]},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                    },
                }
            }
        },
    }
}


def _stack(request: Request) -> Stack:
    stack: Stack = request.app.state.stack
    return stack


def _purpose(fields: dict[str, str]) -> FilePurpose:
    value = fields.get("purpose")
    if value is None:
        raise InvalidRequestError(
            "Missing required parameter: 'purpose'.", code="missing_required_parameter", param="purpose"
        )
    try:
        return FilePurpose(value)
    except ValueError:
        allowed = ", ".join(p.value for p in FilePurpose)
        raise InvalidRequestError(
            f"Invalid value: {quoted(value)}. Supported values are: {allowed}.", param="purpose"
        ) from None


def _expires_after(fields: dict[str, str]) -> ExpiresAfter | None:
    seconds = fields.get("expires_after[seconds]")
    if seconds is None:
        return None
    try:
        return ExpiresAfter(seconds=int(seconds))
    except ValueError:
        message = "expires_after[seconds] must be an integer from 3600 to 2592000."
        raise InvalidRequestError(message, param="expires_after.seconds") from None


@files_router.post("", response_model=FileObject, summary="Upload a file", openapi_extra=_UPLOAD_SCHEMA)
async def upload_file(request: Request) -> FileObject:
    """Multipart upload (``file``, ``purpose``, optional ``expires_after[...]``), streamed to the provider. A file of
    purpose ``batch`` must be JSONL (one JSON object per line) and not empty."""
    form = StreamingForm(request)
    if not await form.until_file():
        raise InvalidRequestError(
            "Missing required parameter: 'file'.", code="missing_required_parameter", param="file"
        )
    chunks: AsyncIterator[bytes] = form.file_chunks()
    if "purpose" not in form.fields:  # sent after the file: keep the file on disk until we know
        chunks = await spool(chunks)
        await form.rest()
    purpose, expires = _purpose(form.fields), _expires_after(form.fields)
    if purpose is FilePurpose.batch:
        chunks = checked_jsonl(chunks)
    created = await _stack(request).files.openai_upload_file(chunks, purpose, form.filename or "upload", expires)
    await form.rest()
    return created


@files_router.get("", response_model=ListFilesResponse, summary="List files")
async def list_files(
    request: Request,
    after: Annotated[str | None, Query(description="A file id: the page starts after it.")] = None,
    limit: Annotated[int, Query(description="Page size, 1 to 10,000.")] = 10_000,
    order: Annotated[Order, Query(description="By creation time.")] = Order.desc,
    purpose: Annotated[FilePurpose | None, Query(description="Only files with this purpose.")] = None,
) -> ListFilesResponse:
    return await _stack(request).files.openai_list_files(after=after, limit=limit, order=order, purpose=purpose)


@files_router.get("/{file_id}", response_model=FileObject, summary="Retrieve a file's metadata")
async def retrieve_file(file_id: str, request: Request) -> FileObject:
    return await _stack(request).files.openai_retrieve_file(file_id)


@files_router.get(
    "/{file_id}/content",
    summary="Download a file's content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def file_content(file_id: str, request: Request) -> StreamingResponse:
    stream = await _stack(request).files.openai_retrieve_file_content(file_id)
    return StreamingResponse(stream, media_type="application/octet-stream")


@files_router.delete("/{file_id}", response_model=FileDeleted, summary="Delete a file")
async def delete_file(file_id: str, request: Request) -> FileDeleted:
    return await _stack(request).files.openai_delete_file(file_id)


@models_router.get("", response_model=ListModelsResponse, summary="List models")
async def list_models(request: Request) -> ListModelsResponse:
    return await _stack(request).models.openai_list_models()


@models_router.get("/{model_id:path}", response_model=OpenAIModel, summary="Retrieve a model")
async def retrieve_model(model_id: str, request: Request) -> OpenAIModel:
    return (await _stack(request).models.get_model(model_id)).to_openai()
