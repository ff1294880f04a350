"""Multipart uploads parsed while they stream in: text fields are collected, the file part's bytes are handed to
the files provider as they arrive. Nothing is buffered whole: a file whose ``purpose`` comes after it (the openai
SDK sends ``purpose`` first) is spooled to a temporary file on disk, not to memory."""

from __future__ import annotations

import asyncio
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from ..errors import InvalidRequestError, bounded, quoted

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = ["StreamingForm", "spool"]

MAX_FIELD_BYTES = 64 * 1024
SPOOL_CHUNK = 1024 * 1024


@dataclass(slots=True)
class _Event:
    kind: str  # "field", "file_start", "data", "file_end", "end"
    name: str = ""
    value: bytes = b""


class StreamingForm:
    """Reads a ``multipart/form-data`` request as events, on demand."""

    def __init__(self, request: Request, file_field: str = "file") -> None:
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            raise InvalidRequestError("The request must be multipart/form-data with a 'file' part.", param="file")
        self._stream = request.stream().__aiter__()
        self._file_field = file_field
        self._events: deque[_Event] = deque()
        self._part: dict[str, Any] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._parser = MultipartParser(boundary, cast("MultipartCallbacks", self._callbacks()))
        self._done = False
        self.fields: dict[str, str] = {}
        self.filename: str | None = None

    def _callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_part_begin(self) -> None:
        self._part = {"name": "", "filename": None, "value": bytearray()}

    def _on_header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self._header_value))
            self._part["name"] = options.get(b"name", b"").decode("utf-8", "replace")
            filename = options.get(b"filename")
            self._part["filename"] = filename.decode("utf-8", "replace") if filename is not None else None
        self._header_field.clear()
        self._header_value.clear()

    def _is_file(self) -> bool:
        return bool(self._part.get("name") == self._file_field and self._part.get("filename") is not None)

    def _on_headers_finished(self) -> None:
        if self._is_file():
            self._events.append(_Event("file_start", self._part["filename"]))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file():
            self._events.append(_Event("data", value=data[start:end]))
            return
        value: bytearray = self._part["value"]
        value.extend(data[start:end])
        if len(value) > MAX_FIELD_BYTES:
            name = self._part["name"]
            raise InvalidRequestError(f"The form field {quoted(name)} is too large.", param=bounded(name, 64))

    def _on_part_end(self) -> None:
        if self._is_file():
            self._events.append(_Event("file_end"))
        else:
            self._events.append(_Event("field", self._part["name"], bytes(self._part["value"])))

    async def _next(self) -> _Event:
        while not self._events:
            if self._done:
                return _Event("end")
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._done = True
                self._feed(None)
                continue
            self._feed(chunk)
        return self._events.popleft()

    def _feed(self, chunk: bytes | None) -> None:
        try:
            if chunk is None:
                self._parser.finalize()
            else:
                self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequestError(
                f"Malformed multipart body: {exc}", code="invalid_multipart", param="file"
            ) from None

    async def until_file(self) -> bool:
        """Collect fields until the file part starts; False when the form has no file part."""
        while True:
            event = await self._next()
            if event.kind == "field":
                self.fields[event.name] = event.value.decode("utf-8", "replace")
            elif event.kind == "file_start":
                self.filename = event.name
                return True
            elif event.kind == "end":
                return False

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file part's bytes, as they arrive."""
        while (event := await self._next()).kind == "data":
            if event.value:
                yield event.value

    async def rest(self) -> None:
        """Collect the fields that follow the file part."""
        while (event := await self._next()).kind != "end":
            if event.kind == "field":
                self.fields[event.name] = event.value.decode("utf-8", "replace")


async def spool(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Write ``chunks`` to a temporary file on disk, then stream it back (for a file that came before its purpose).
    The returned iterator holds the whole file on disk, never in memory."""
    handle = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the reader below)
    try:
        async for chunk in chunks:
            await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(handle.seek, 0)
    except BaseException:
        handle.close()
        raise
    return _read_back(handle)


async def _read_back(handle: Any) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, SPOOL_CHUNK):
            yield chunk
    finally:
        handle.close()
