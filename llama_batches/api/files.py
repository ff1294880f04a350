"""The Files API: OpenAI's ``/v1/files``, streamed both ways.

Uploads take an async byte stream and content is returned as one, so no file is ever held whole in memory.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from enum import StrEnum
from typing import Literal, Protocol, runtime_checkable

from openai.types import FileDeleted, FileObject
from pydantic import BaseModel, Field

from ..errors import InvalidRequestError, quoted
from .common import ListResponse, Order

__all__ = [
    "UPLOAD_PURPOSES",
    "ExpiresAfter",
    "FileDeleted",
    "FileObject",
    "FilePurpose",
    "Files",
    "ListFilesResponse",
    "plausible_file_id",
]

_FILE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:=+-]{0,255}")


class FilePurpose(StrEnum):
    """What a file is for: the purposes of OpenAI's file object (``batch_output`` for batch results)."""

    assistants = "assistants"
    batch = "batch"
    batch_output = "batch_output"
    fine_tune = "fine-tune"
    vision = "vision"
    user_data = "user_data"

    @classmethod
    def parse(cls, value: str) -> FilePurpose:
        """``value`` as a purpose; InvalidRequestError naming ``purpose`` and the allowed values otherwise."""
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(p.value for p in cls)
            raise InvalidRequestError(
                f"Invalid value: {quoted(value)}. Supported values are: {allowed}.",
                code="invalid_value",
                param="purpose",
            ) from None


UPLOAD_PURPOSES = tuple(p for p in FilePurpose if p is not FilePurpose.batch_output)
"""The purposes a client may upload with: ``batch_output`` files are written by the server only."""


def plausible_file_id(value: str) -> bool:
    """Whether ``value`` has the shape of a file id of any provider (OpenAI's ``file-abc123``, a uuid, a proxy's
    base64 id): 1 to 256 ASCII letters, digits and ``_ . : = + -``, starting with a letter or digit. Anything else
    (a NUL, a control character, a space, a slash, a percent sign, non-ASCII, 10 KB) names no file anywhere."""
    return _FILE_ID.fullmatch(value) is not None


class ExpiresAfter(BaseModel):
    """A file expiry policy: ``seconds`` after its creation."""

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(ge=3600, le=2_592_000)


class ListFilesResponse(ListResponse[FileObject]):
    """A page of files."""


@runtime_checkable
class Files(Protocol):
    """Upload, list, read and delete files."""

    async def openai_upload_file(
        self,
        file: AsyncIterable[bytes],
        purpose: FilePurpose,
        filename: str,
        expires_after: ExpiresAfter | None = None,
    ) -> FileObject:
        """Store a file read from ``file`` chunk by chunk.

        :param file: the content, as an async iterable of byte chunks.
        :param purpose: what the file is for; ``batch`` for batch input.
        :param filename: the client's name for the file (kept as metadata only).
        :param expires_after: when the file expires.
        :raises PayloadTooLargeError: the content exceeds the provider's limit; nothing is stored.
        """
        ...

    async def openai_list_files(
        self,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = Order.desc,
        purpose: FilePurpose | None = None,
    ) -> ListFilesResponse:
        """List the caller's files by creation time.

        :param after: a file id; the page starts after it.
        :param limit: page size, 1 to 10,000.
        :param order: ``desc`` (newest first, default) or ``asc``.
        :param purpose: only files with this purpose.
        """
        ...

    async def openai_retrieve_file(self, file_id: str) -> FileObject:
        """Return a file's metadata.

        :raises NotFoundError: no such file for this caller.
        """
        ...

    async def openai_retrieve_file_content(self, file_id: str) -> AsyncIterator[bytes]:
        """Return the file's content as a stream of byte chunks.

        Awaiting this raises ``NotFoundError`` for a missing file before any byte is streamed.
        """
        ...

    async def openai_delete_file(self, file_id: str) -> FileDeleted:
        """Delete a file and its content.

        :raises NotFoundError: no such file for this caller.
        """
        ...
