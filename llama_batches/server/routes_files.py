"""``/v1/files``: uploads parsed while they stream, content streamed back."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ..api import (
    ExpiresAfter,
    FileDeleted,
    FileObject,
    FilePurpose,
    Files,
    ListFilesResponse,
    Order,
)
from ..api.files import UPLOAD_PURPOSES, LateExpiresAfter, late_expiry_files, plausible_file_id
from ..config_uploads import UploadsConfig
from ..errors import InvalidRequestError, NotFoundError, quoted
from ..stack import Stack
from .jsonl import checked_jsonl
from .uploads import StreamingForm, spool

__all__ = ["DEFAULT_MAX_FILE_BYTES", "files_router"]

files_router = APIRouter(prefix="/v1/files", tags=["Files"])

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
"""The upload cap when the files provider does not say its own (``max_file_size_bytes``): OpenAI's 512 MB."""
_MIN_SECONDS, _MAX_SECONDS = 3600, 2_592_000
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_EXPIRY_FIELDS = frozenset({"expires_after[anchor]", "expires_after[seconds]"})

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
                        "purpose": {"type": "string", "enum": [p.value for p in UPLOAD_PURPOSES]},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer", "minimum": _MIN_SECONDS, "maximum": _MAX_SECONDS},
                    },
                }
            }
        },
    }
}


def _stack(request: Request) -> Stack:
    stack: Stack = request.app.state.stack
    return stack


def _file_id(file_id: str) -> str:
    """``file_id``, or a 404 before any lookup when no provider could have made it (a NUL, a slash, 10 KB...)."""
    if not plausible_file_id(file_id):
        raise NotFoundError.for_resource("file", file_id, param="file_id")
    return file_id


def _purpose(fields: dict[str, str]) -> FilePurpose:
    value = fields.get("purpose")
    if value is None:
        raise InvalidRequestError(
            "Missing required parameter: 'purpose'.", code="missing_required_parameter", param="purpose"
        )
    if value not in {p.value for p in UPLOAD_PURPOSES}:
        allowed = ", ".join(quoted(p.value) for p in UPLOAD_PURPOSES)
        written = " (batch_output files are written by the server)" if value == FilePurpose.batch_output else ""
        raise InvalidRequestError(
            f"Invalid value: {quoted(value)}{written}. Supported values are: {allowed}.",
            code="invalid_value",
            param="purpose",
        )
    return FilePurpose(value)


def _seconds(value: str) -> int:
    param = "expires_after.seconds"
    if _INTEGER.fullmatch(value) is None:
        message = f"Invalid type for {quoted(param)}: expected an integer, but got {quoted(value)} instead."
        raise InvalidRequestError(message, code="invalid_type", param=param)
    seconds = int(value)
    if seconds < _MIN_SECONDS:
        bound, code = f">= {_MIN_SECONDS}", "integer_below_min_value"
    elif seconds > _MAX_SECONDS:
        bound, code = f"<= {_MAX_SECONDS}", "integer_above_max_value"
    else:
        return seconds
    message = f"Invalid {quoted(param)}: expected a value {bound}, but got {seconds} instead."
    raise InvalidRequestError(message, code=code, param=param)


def _expires_after(fields: dict[str, str]) -> ExpiresAfter | None:
    """``expires_after[anchor]`` and ``expires_after[seconds]`` as OpenAI checks them: both or neither, the anchor
    ``created_at``, the seconds an integer from 3600 to 2592000; a 400 naming the field otherwise."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    for name, value in (("anchor", anchor), ("seconds", seconds)):
        if value is None:
            message = f"Missing required parameter: 'expires_after.{name}'."
            raise InvalidRequestError(message, code="missing_required_parameter", param=f"expires_after.{name}")
    if anchor != "created_at":
        message = f"Invalid value: {quoted(anchor or '')}. Supported values are: 'created_at'."
        raise InvalidRequestError(message, code="invalid_value", param="expires_after.anchor")
    return ExpiresAfter(seconds=_seconds(seconds or ""))


def _max_file_bytes(files: Files) -> int:
    limit = getattr(files, "max_file_size_bytes", None)
    return limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_FILE_BYTES


async def _then_rest(
    chunks: AsyncIterator[bytes], form: StreamingForm, late: LateExpiresAfter | None
) -> AsyncIterator[bytes]:
    """``chunks``, then the rest of the form read and its ``expires_after`` checked (and handed to ``late``), before
    the provider keeps the file: a bad late field makes it keep nothing."""
    async for chunk in chunks:
        yield chunk
    await form.rest()
    expires = _expires_after(form.fields)
    if late is not None:
        late.set(expires)


@files_router.post("", response_model=FileObject, summary="Upload a file", openapi_extra=_UPLOAD_SCHEMA)
async def upload_file(request: Request) -> FileObject:
    """Multipart upload (``file``, ``purpose``, optional ``expires_after[anchor]`` and ``expires_after[seconds]``, in
    any order), streamed to the provider. A file of purpose ``batch`` must be JSONL: not empty, its first line a JSON
    object; a UTF-8 byte order mark at its start is dropped.

    Fields sent before the file are checked before it is read. When ``purpose`` comes after the file, the file is
    spooled until it is known. An ``expires_after`` not wholly sent before the file is known once the file is read:
    the provider is handed a :class:`LateExpiresAfter` it resolves then, before it keeps anything (a provider that
    does not take one gets the file spooled instead), so a file never exists with another expiry."""
    stack = _stack(request)
    files, settings = stack.files, stack.config.server.uploads
    form = StreamingForm(request, _max_file_bytes(files))
    if not await form.until_file():
        raise InvalidRequestError(
            "Missing required parameter: 'file'.", code="missing_required_parameter", param="file"
        )
    chunks: AsyncIterator[bytes] = form.file_chunks()
    purpose = _purpose(form.fields) if "purpose" in form.fields else None
    expiry_first = form.fields.keys() >= _EXPIRY_FIELDS  # else it is checked once the rest of the form is read
    name, late_files = form.filename or "upload", late_expiry_files(files)
    if purpose is not None and not expiry_first and late_files is not None:
        late = LateExpiresAfter()
        checked = _then_rest(_checked(chunks, purpose, settings), form, late)
        return await late_files.openai_upload_file(checked, purpose, name, late)
    if purpose is None or not expiry_first:  # keep the file on disk until the fields after it are read
        chunks = await spool(chunks, settings.spool_dir)
        await form.rest()
        purpose = _purpose(form.fields)
    expires = _expires_after(form.fields)
    return await files.openai_upload_file(
        _then_rest(_checked(chunks, purpose, settings), form, None), purpose, name, expires
    )


def _checked(chunks: AsyncIterator[bytes], purpose: FilePurpose, settings: UploadsConfig) -> AsyncIterator[bytes]:
    if purpose is not FilePurpose.batch:
        return chunks
    return checked_jsonl(chunks, every_line=settings.jsonl_check == "every_line")


@files_router.get("", response_model=ListFilesResponse, summary="List files")
async def list_files(
    request: Request,
    after: Annotated[str | None, Query(description="A file id: the page starts after it.")] = None,
    limit: Annotated[int, Query(description="Page size, 1 to 10,000.")] = 10_000,
    order: Annotated[Order, Query(description="By creation time.")] = Order.desc,
    purpose: Annotated[FilePurpose | None, Query(description="Only files with this purpose.")] = None,
) -> ListFilesResponse:
    if after is not None and not plausible_file_id(after):
        return ListFilesResponse.of([], has_more=False)  # a cursor no file can have: the page after it is empty
    return await _stack(request).files.openai_list_files(after=after, limit=limit, order=order, purpose=purpose)


@files_router.get("/{file_id}", response_model=FileObject, summary="Retrieve a file's metadata")
async def retrieve_file(file_id: str, request: Request) -> FileObject:
    return await _stack(request).files.openai_retrieve_file(_file_id(file_id))


@files_router.get(
    "/{file_id}/content",
    summary="Download a file's content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def file_content(file_id: str, request: Request) -> StreamingResponse:
    """The content, from a file the provider opened before this answers (a file deleted meanwhile is a 404, never a
    broken body). A request body, which has no use here, is read (within the 1 MiB cap) before the answer, so that
    the streamed answer's disconnect listener never reads one."""
    await request.body()
    stream = await _stack(request).files.openai_retrieve_file_content(_file_id(file_id))
    return StreamingResponse(stream, media_type="application/octet-stream")


@files_router.delete("/{file_id}", response_model=FileDeleted, summary="Delete a file")
async def delete_file(file_id: str, request: Request) -> FileDeleted:
    return await _stack(request).files.openai_delete_file(_file_id(file_id))
