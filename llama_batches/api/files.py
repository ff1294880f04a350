"""The Files API: OpenAI's ``/v1/files``, streamed both ways.

Uploads take an async byte stream and content is returned as one, so no file is ever held whole in memory.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from enum import StrEnum
from typing import Literal, Protocol, cast, runtime_checkable

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
    "LateExpiresAfter",
    "LateExpiryFiles",
    "ListFilesResponse",
    "late_expiry_files",
    "plausible_file_id",
    "resolve_expires_after",
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


class LateExpiresAfter:
    """The expiry of an upload whose ``expires_after`` fields come after its content (in a multipart form, after the
    file part): known only once the content has been read to its end, when the uploader :meth:`set` s it.

    The server passes one as ``expires_after`` only to a :class:`LateExpiryFiles` (other providers get the content
    spooled and a plain ``ExpiresAfter`` or None), which reads it with :func:`resolve_expires_after` after it has
    read ``file`` to its end and before it keeps anything, so that a file never exists, even for a moment, with
    another expiry.
    """

    __slots__ = ("_known", "_value")

    def __init__(self) -> None:
        self._known = False
        self._value: ExpiresAfter | None = None

    def set(self, value: ExpiresAfter | None) -> None:
        """The expiry, once the content is read whole: None for the provider's default lifetime."""
        self._value, self._known = value, True

    def get(self) -> ExpiresAfter | None:
        """The expiry; RuntimeError when read before it is known (before the content's end)."""
        if not self._known:
            raise RuntimeError("an upload's late expires_after was read before the end of its content")
        return self._value


def resolve_expires_after(expires_after: ExpiresAfter | LateExpiresAfter | None) -> ExpiresAfter | None:
    """``expires_after`` as a plain value: a :class:`LateExpiresAfter` resolved (call it once ``file`` is
    exhausted)."""
    return expires_after.get() if isinstance(expires_after, LateExpiresAfter) else expires_after


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

        :param file: the content, as an async iterable of byte chunks. An error raised while it is read (the client
            went away, a bad form field after the file) stores nothing.
        :param purpose: what the file is for; ``batch`` for batch input.
        :param filename: the client's name for the file (kept as metadata only).
        :param expires_after: when the file expires; None for the provider's default (see :class:`LateExpiryFiles`
            for an expiry known only at the end of the content).
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


class LateExpiryFiles(Files, Protocol):
    """A :class:`Files` that also takes an expiry known only once the content is read (an upload form whose
    ``expires_after`` follows the file part), so that the server need not spool the content first. It says so with
    ``accepts_late_expiry = True``; its ``openai_upload_file`` then takes a :class:`LateExpiresAfter` as
    ``expires_after``, read with :func:`resolve_expires_after` once ``file`` is exhausted, before anything is kept.
    The plain ``Files`` contract is unchanged: a provider without the attribute is never handed one."""

    accepts_late_expiry: bool

    async def openai_upload_file(
        self,
        file: AsyncIterable[bytes],
        purpose: FilePurpose,
        filename: str,
        expires_after: ExpiresAfter | LateExpiresAfter | None = None,
    ) -> FileObject:
        """:meth:`Files.openai_upload_file`, ``expires_after`` possibly late."""
        ...


def late_expiry_files(files: Files) -> LateExpiryFiles | None:
    """``files`` as a :class:`LateExpiryFiles` if it says ``accepts_late_expiry = True``, else None."""
    return cast(LateExpiryFiles, files) if getattr(files, "accepts_late_expiry", False) is True else None
