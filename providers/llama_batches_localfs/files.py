"""The ``inline::localfs`` Files implementation.

Content is written chunk by chunk to ``<storage_dir>/.<id>.part``, synced once and renamed to ``<storage_dir>/<id>``;
the client's file name is metadata only, never a path. Metadata rows are owned by the current principal.

A ``.part`` file left by a process killed mid-upload is removed once it has not been written to for
``STALE_PART_SECS``, by a sweep of the directory when the provider starts and then every ``part_sweep_interval_secs``
(``STALE_PART_SECS`` by default) while it runs: a leftover is gone within about twice ``STALE_PART_SECS``, however
often the server restarts. An upload in progress in another process sharing the directory writes to its ``.part`` at
least every ``WRITE_INTERVAL_SECS`` while bytes arrive, so only one stalled for minutes could be taken for a
leftover; this process's own uploads are never swept, however slow.

An upload may be handed a :class:`~llama_batches.api.files.LateExpiresAfter` (``accepts_late_expiry``): it is read
once the content is on disk, before the metadata row is written, so the file is listed with its expiry or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import unicodedata
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection
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
from llama_batches.api.files import LateExpiresAfter, resolve_expires_after
from llama_batches.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError, quoted
from llama_batches.principal import current_principal
from llama_batches.storage import Table

from .config import STALE_PART_SECS, LocalfsFilesImplConfig
from .importing import FileImport

__all__ = ["STALE_PART_SECS", "FileChunks", "LocalfsFilesImpl", "safe_filename", "sweep_parts"]

logger = logging.getLogger(__name__)

WRITE_BUFFER_BYTES = 1024 * 1024
WRITE_INTERVAL_SECS = 10.0
READ_CHUNK_BYTES = 1024 * 1024
# Controls (C0, C1, DEL), format characters (bidirectional marks and overrides, which can make a name display as
# another: ``invoice\u202egnp.exe``; zero-width spaces, soft hyphens, byte order marks, word joiners), line and
# paragraph separators, private-use, surrogate and unassigned code points: none is visible in a plain name
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})
# except the zero-width (non-)joiner, part of emoji sequences and of the spelling of Persian or Indic words
_KEPT = frozenset({"\u200c", "\u200d"})


def _visible(char: str) -> bool:
    return char in _KEPT or unicodedata.category(char) not in _UNSAFE_CATEGORIES


def safe_filename(name: str) -> str:
    """The client's file name reduced to a plain name: no directories; no control, format (but the zero-width
    joiners), separator other than spaces, private-use or unassigned characters; <= 255 bytes."""
    base = "".join(filter(_visible, name.replace("\\", "/").rsplit("/", 1)[-1])).strip()
    if base in ("", ".", ".."):
        return "upload"
    return base.encode("utf-8")[:255].decode("utf-8", "ignore")


def _new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


class LocalfsFilesImpl(FileImport):
    """Files on a local directory; see the module docstring."""

    accepts_late_expiry = True
    """``openai_upload_file`` takes a :class:`LateExpiresAfter`, read once the content is on disk."""

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
        self._writing: set[Path] = set()  # the .part files of this process's uploads in progress: never swept
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def max_file_size_bytes(self) -> int:
        """The largest file accepted (the server enforces it on the wire too, whatever the order of the form)."""
        return self._config.max_file_size_bytes

    async def initialize(self) -> None:
        """Create the storage directory; remove the ``.part`` files left by uploads that were killed, now and every
        ``part_sweep_interval_secs`` until :meth:`shutdown`."""
        await asyncio.to_thread(self._dir.mkdir, parents=True, exist_ok=True)
        await self._sweep()
        if self._sweeper is None:
            interval = self._config.part_sweep_interval_secs
            self._sweeper = asyncio.create_task(self._sweep_every(interval), name=f"sweep {self._dir}")

    async def shutdown(self) -> None:
        """Stop the sweeps (the stack closes the store)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.wait({sweeper})

    async def _sweep(self) -> None:
        before, live = time.time() - STALE_PART_SECS, frozenset(self._writing)
        swept = await asyncio.to_thread(sweep_parts, self._dir, before, live)
        if swept:
            logger.warning("removed %d unfinished upload(s) left in %s", swept, self._dir)

    async def _sweep_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._sweep()
            except Exception:  # a directory gone or unreadable for a while: try again next time
                logger.exception("sweeping %s for unfinished uploads failed", self._dir)

    def _path(self, file_id: str) -> Path:
        return self._dir / file_id

    async def openai_upload_file(
        self,
        file: AsyncIterable[bytes],
        purpose: FilePurpose,
        filename: str,
        expires_after: ExpiresAfter | LateExpiresAfter | None = None,
    ) -> FileObject:
        purpose = FilePurpose.parse(purpose)
        file_id = self._new_id()
        size = await self._write(file_id, file)
        try:
            expires = resolve_expires_after(expires_after)  # ``file`` is exhausted: a late expiry is known
            now = int(self._clock())
            lifetime = expires.seconds if expires is not None else self._config.ttl_secs
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
        self._writing.add(part)
        try:
            handle = await asyncio.to_thread(part.open, "wb")
            try:
                size = await self._copy(chunks, handle)
                await asyncio.to_thread(_sync_and_close, handle)
                await asyncio.to_thread(os.replace, part, self._path(file_id))
            except BaseException:
                await asyncio.to_thread(handle.close)
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise
        finally:
            self._writing.discard(part)
        return size

    async def _copy(self, chunks: AsyncIterable[bytes], handle: BinaryIO) -> int:
        """Write ``chunks`` to ``handle`` by at least ``WRITE_BUFFER_BYTES`` (or every ``WRITE_INTERVAL_SECS``, so
        a slow upload's ``.part`` never looks abandoned); 413 on the first byte past the limit."""
        size, buffer, limit = 0, bytearray(), self._config.max_file_size_bytes
        written = time.monotonic()
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"The file is larger than the limit of {limit} bytes.", code="file_too_large", param="file"
                )
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER_BYTES or time.monotonic() - written >= WRITE_INTERVAL_SECS:
                await asyncio.to_thread(handle.write, bytes(buffer))
                buffer.clear()
                written = time.monotonic()
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
        """The content, from a file opened before this returns: a file deleted afterwards is still read whole (an
        open file keeps its data), and one deleted before is a NotFoundError, never a stream that breaks."""
        await self.openai_retrieve_file(file_id)
        try:
            handle = self._path(file_id).open("rb")  # a quick syscall, in the loop: see FileChunks
        except (FileNotFoundError, IsADirectoryError):
            raise NotFoundError(f"The content of file {quoted(file_id)} is missing.", param="file_id") from None
        return FileChunks(handle)

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


class FileChunks:
    """An open file's content as async chunks, read in a thread. It is closed at its end, on ``aclose`` or when
    dropped unread (a response never sent); open and close happen in the loop, so that a cancellation cannot lose
    the handle between threads."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    def __aiter__(self) -> FileChunks:
        return self

    async def __anext__(self) -> bytes:
        if self._handle.closed:
            raise StopAsyncIteration
        chunk = await asyncio.to_thread(self._handle.read, READ_CHUNK_BYTES)
        if not chunk:
            self._handle.close()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._handle.close()

    def __del__(self) -> None:
        self._handle.close()


def sweep_parts(directory: Path, before: float, keep: Collection[Path] = ()) -> int:
    """Remove the ``.part`` files of ``directory`` last written before ``before`` (a time.time() value), but those
    in ``keep``; how many."""
    removed = 0
    for path in directory.glob(".*.part"):
        try:
            if path not in keep and path.is_file() and path.stat().st_mtime < before:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another process swept it first
            continue
    return removed
