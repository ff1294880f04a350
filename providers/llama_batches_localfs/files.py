"""The ``inline::localfs`` Files implementation.

Content is written chunk by chunk to ``<storage_dir>/.<id>.part``, synced once and renamed to ``<storage_dir>/<id>``;
the client's file name is metadata only, never a path. Metadata rows are owned by the current principal.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from llama_batches.api import (
    ExpiresAfter,
    FileDeleted,
    FileObject,
    FilePurpose,
    ListFilesResponse,
    Order,
)
from llama_batches.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError, quoted
from llama_batches.principal import current_principal
from llama_batches.storage import Table

from .config import LocalfsFilesImplConfig

__all__ = ["LocalfsFilesImpl", "safe_filename"]

WRITE_BUFFER_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def safe_filename(name: str) -> str:
    """The client's file name reduced to a plain name: no directories, no control characters, <= 255 bytes."""
    base = _UNSAFE.sub("", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if base in ("", ".", ".."):
        return "upload"
    return base.encode("utf-8")[:255].decode("utf-8", "ignore")


def _new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


class LocalfsFilesImpl:
    """Files on a local directory; see the module docstring."""

    def __init__(
        self,
        config: LocalfsFilesImplConfig,
        table: Table[FileObject],
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = _new_file_id,
    ) -> None:
        self._config = config
        self._table = table
        self._clock = clock
        self._new_id = new_id
        self._dir = Path(config.storage_dir).expanduser()

    async def initialize(self) -> None:
        """Create the storage directory."""
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)

    async def shutdown(self) -> None:
        """Nothing to release: the stack closes the store."""

    def _path(self, file_id: str) -> Path:
        return self._dir / file_id

    async def openai_upload_file(
        self,
        file: AsyncIterable[bytes],
        purpose: FilePurpose,
        filename: str,
        expires_after: ExpiresAfter | None = None,
    ) -> FileObject:
        purpose = FilePurpose.parse(purpose)
        file_id = self._new_id()
        size = await self._write(file_id, file)
        now = int(self._clock())
        lifetime = expires_after.seconds if expires_after is not None else self._config.ttl_secs
        try:
            record = FileObject(
                id=file_id,
                object="file",
                bytes=size,
                created_at=now,
                expires_at=now + lifetime,
                filename=safe_filename(filename),
                purpose=purpose.value,
                status="processed",
            )
            await self._table.insert(current_principal(), record, tag=purpose.value)
        except BaseException:
            await asyncio.to_thread(self._path(file_id).unlink, missing_ok=True)
            raise
        return record

    async def _write(self, file_id: str, chunks: AsyncIterable[bytes]) -> int:
        part = self._dir / f".{file_id}.part"
        handle = await asyncio.to_thread(part.open, "wb")
        try:
            size = await self._copy(chunks, handle)
            await asyncio.to_thread(_sync_and_close, handle)
            await asyncio.to_thread(os.replace, part, self._path(file_id))
        except BaseException:
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise
        return size

    async def _copy(self, chunks: AsyncIterable[bytes], handle: BinaryIO) -> int:
        size, buffer, limit = 0, bytearray(), self._config.max_file_size_bytes
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"The file is larger than the limit of {limit} bytes.", code="file_too_large", param="file"
                )
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER_BYTES:
                await asyncio.to_thread(handle.write, bytes(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(handle.write, bytes(buffer))
        return size

    async def openai_list_files(
        self,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = Order.desc,
        purpose: FilePurpose | None = None,
    ) -> ListFilesResponse:
        if not 1 <= limit <= 10_000:
            raise InvalidRequestError("limit must be between 1 and 10000.", code="invalid_value", param="limit")
        tag = FilePurpose.parse(purpose).value if purpose is not None else None
        page = await self._table.list(current_principal(), after=after, limit=limit, order=Order(order), tag=tag)
        return ListFilesResponse.of(page.items, has_more=page.has_more)

    async def openai_retrieve_file(self, file_id: str) -> FileObject:
        stored = await self._table.get(current_principal(), file_id)
        if stored is None:
            raise NotFoundError.for_resource("file", file_id, param="file_id")
        record = stored.value
        if record.expires_at is not None and record.expires_at <= self._clock():
            await self._remove(file_id)
            raise NotFoundError(f"The file {quoted(file_id)} has expired.", code="not_found", param="file_id")
        return record

    async def openai_retrieve_file_content(self, file_id: str) -> AsyncIterator[bytes]:
        await self.openai_retrieve_file(file_id)
        path = self._path(file_id)
        if not await asyncio.to_thread(path.is_file):
            raise NotFoundError(f"The content of file {quoted(file_id)} is missing.", param="file_id")
        return _read_chunks(path)

    async def openai_delete_file(self, file_id: str) -> FileDeleted:
        await self.openai_retrieve_file(file_id)
        deleted = await self._remove(file_id)
        return FileDeleted(id=file_id, object="file", deleted=deleted)

    async def _remove(self, file_id: str) -> bool:
        deleted = await self._table.delete(current_principal(), file_id)
        await asyncio.to_thread(self._path(file_id).unlink, missing_ok=True)
        return deleted


def _sync_and_close(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


async def _read_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file's chunks; it is opened on the first read, so a stream never iterated holds no file open. Open and
    close are quick syscalls made in the loop, so that a cancellation cannot lose the handle between threads."""
    handle = path.open("rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()
