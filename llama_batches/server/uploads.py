"""Multipart uploads parsed while they stream in: text fields are collected, the file part's bytes are handed on as
they arrive. Everything is bounded as it arrives, whatever the order of the parts:

- the file part: at most ``max_file_bytes`` (413 ``file_too_large`` on the first byte past it);
- text fields: at most ``MAX_FIELDS`` of them (any name), each at most ``MAX_FIELD_BYTES`` (400);
- a part's header lines: at most ``MAX_PART_HEADER_BYTES`` (400);
- one ``file`` part, each field once (400 otherwise: which one counts would be a guess);
- the boundary: at most ``MAX_BOUNDARY_LENGTH`` characters (RFC 2046; 400 ``invalid_multipart``, as is anything
  python-multipart refuses);
- the whole body: at most ``max_file_bytes`` plus what the fields and headers above may take (413
  ``body_too_large``), by ``Content-Length`` before anything is read, or as it streams in (an epilogue after the
  closing boundary is read and dropped, but counted); this is the cap the form gives its request in place of the
  1 MiB of every other route (:func:`.limits.allow_body`).

A file whose ``purpose`` comes after it (the openai SDK sends ``purpose`` first) is spooled to an unnamed temporary
file (:func:`spool`), never to memory; the cap above stops the spool too, and so does a body that stays silent
(``server.uploads.idle_timeout_s``, :mod:`.limits`, which also bounds how many uploads are received at once).
"""

from __future__ import annotations

import asyncio
import inspect
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from ..errors import InvalidRequestError, PayloadTooLargeError, bounded, quoted
from .limits import allow_body

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

__all__ = [
    "MAX_BOUNDARY_LENGTH",
    "MAX_FIELDS",
    "MAX_FIELD_BYTES",
    "MAX_PART_HEADER_BYTES",
    "Spooled",
    "StreamingForm",
    "spool",
]

MAX_FIELDS = 16
MAX_FIELD_BYTES = 64 * 1024
MAX_PART_HEADER_BYTES = 8 * 1024
MAX_BOUNDARY_LENGTH = 70  # RFC 2046 5.1.1
_HEADER_LINE_OVERHEAD = 4  # ": " and CRLF: so that empty header lines count too
_FORM_OVERHEAD_BYTES = (MAX_FIELDS + 1) * (MAX_FIELD_BYTES + MAX_PART_HEADER_BYTES + 1024)
SPOOL_CHUNK = 1024 * 1024
# python-multipart >= 0.0.2x has limits of its own per header line and header count, answered as a parse error: ours
# (all of a part's header bytes, counted as they come) are the ones that apply, whatever the version
_PARSER_OPTIONS: dict[str, Any] = (
    {"max_header_size": 2**62, "max_header_count": 2**62}
    if "max_header_size" in inspect.signature(MultipartParser).parameters
    else {}
)


@dataclass(slots=True)
class _Event:
    kind: str  # "field", "file_start", "data", "file_end", "end"
    name: str = ""
    value: bytes = b""


def _bad_form(message: str, code: str, param: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param)


def _malformed(problem: FormParserError | str) -> InvalidRequestError:
    return _bad_form(f"Malformed multipart body: {bounded(str(problem), 200)}", "invalid_multipart", "file")


class StreamingForm:
    """Reads a ``multipart/form-data`` request as events, on demand, within the bounds of the module docstring."""

    def __init__(self, request: Request, max_file_bytes: int, file_field: str = "file") -> None:
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        boundary = options.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            raise InvalidRequestError("The request must be multipart/form-data with a 'file' part.", param="file")
        if len(boundary) > MAX_BOUNDARY_LENGTH:
            raise _malformed(f"its boundary is longer than {MAX_BOUNDARY_LENGTH} characters (RFC 2046).")
        self.max_file_bytes = max_file_bytes
        self.max_body_bytes = max_file_bytes + _FORM_OVERHEAD_BYTES
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._body_too_large()
        allow_body(request.scope, self.max_body_bytes)
        self._stream = request.stream().__aiter__()
        self._file_field = file_field
        self._events: deque[_Event] = deque()
        self._part: dict[str, Any] = {}
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        try:
            self._parser = MultipartParser(boundary, cast("MultipartCallbacks", self._callbacks()), **_PARSER_OPTIONS)
        except FormParserError as exc:
            raise _malformed(exc) from None
        self._done = self._ended = False
        self._received = self._file_bytes = self._field_count = 0
        self._names: set[str] = set()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None

    def _body_too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than {self.max_body_bytes} bytes.", code="body_too_large", param="file"
        )

    def _callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda d, s, e: self._on_header_bytes(self._header_field, d[s:e]),
            "on_header_value": lambda d, s, e: self._on_header_bytes(self._header_value, d[s:e]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._part = {"name": "", "filename": None, "value": bytearray()}
        self._header_bytes = 0

    def _on_header_bytes(self, into: bytearray, data: bytes) -> None:
        self._header_bytes += len(data)
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            message = f"The header lines of a form part are larger than {MAX_PART_HEADER_BYTES} bytes."
            raise _bad_form(message, "part_headers_too_large")
        into.extend(data)

    def _on_header_end(self) -> None:
        self._on_header_bytes(bytearray(), b" " * _HEADER_LINE_OVERHEAD)
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
        name: str = self._part["name"]
        if name in self._names:
            message = f"The form field {quoted(name)} is given more than once."
            raise _bad_form(message, "duplicate_parameter", bounded(name, 64))
        self._names.add(name)
        if self._is_file():
            self._events.append(_Event("file_start", self._part["filename"]))
            return
        self._field_count += 1
        if self._field_count > MAX_FIELDS:
            raise _bad_form(f"The form has more than {MAX_FIELDS} fields besides the file.", "too_many_fields")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file():
            self._file_bytes += end - start
            if self._file_bytes > self.max_file_bytes:
                raise PayloadTooLargeError(
                    f"The file is larger than the limit of {self.max_file_bytes} bytes.",
                    code="file_too_large",
                    param="file",
                )
            self._events.append(_Event("data", value=data[start:end]))
            return
        value: bytearray = self._part["value"]
        value.extend(data[start:end])
        if len(value) > MAX_FIELD_BYTES:
            name = self._part["name"]
            message = f"The form field {quoted(name)} is larger than {MAX_FIELD_BYTES} bytes."
            raise _bad_form(message, "field_too_large", bounded(name, 64))

    def _on_part_end(self) -> None:
        if self._is_file():
            self._events.append(_Event("file_end"))
        else:
            self._events.append(_Event("field", self._part["name"], bytes(self._part["value"])))

    def _on_end(self) -> None:
        self._ended = True

    async def _next(self) -> _Event:
        while not self._events:
            if self._done:
                return _Event("end")
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._done = True
                self._feed(None)
                if not self._ended:  # a short Content-Length, or a client that stopped: nothing is complete
                    raise _malformed("it ends before its closing boundary.") from None
                continue
            self._received += len(chunk)
            if self._received > self.max_body_bytes:
                raise self._body_too_large()
            self._feed(chunk)
        return self._events.popleft()

    def _feed(self, chunk: bytes | None) -> None:
        try:
            if chunk is None:
                self._parser.finalize()
            else:
                self._parser.write(chunk)
        except FormParserError as exc:  # python-multipart's errors, whatever they are: the body's fault
            raise _malformed(exc) from None

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
        """The file part's bytes, as they arrive (never more than ``max_file_bytes`` in all)."""
        while (event := await self._next()).kind == "data":
            if event.value:
                yield event.value

    async def rest(self) -> None:
        """Collect the fields that follow the file part, to the end of the body."""
        while (event := await self._next()).kind != "end":
            if event.kind == "field":
                self.fields[event.name] = event.value.decode("utf-8", "replace")


async def spool(chunks: AsyncIterator[bytes], directory: str | None = None) -> Spooled:
    """Write ``chunks`` to an unnamed temporary file in ``directory`` (the system's temporary directory by default)
    and return it, to be streamed back. Being unnamed (unlinked at once), the file leaves nothing behind even when
    the process is killed; it is closed, and so gone, when read back, on ``aclose`` or on any error. How much it may
    hold is ``chunks``' business (the form's cap)."""
    handle = await asyncio.to_thread(_temporary_file, directory)
    try:
        async for chunk in chunks:
            await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(handle.seek, 0)
    except BaseException:
        handle.close()
        raise
    return Spooled(handle)


def _temporary_file(directory: str | None) -> BinaryIO:
    where = None if directory is None else Path(directory).expanduser()
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=where, prefix="llama-batches-upload-")


class Spooled:
    """A spooled file's content as async chunks; closed at its end, on ``aclose`` or when dropped unread."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    def __aiter__(self) -> Spooled:
        return self

    async def __anext__(self) -> bytes:
        if self._handle.closed:
            raise StopAsyncIteration
        chunk = await asyncio.to_thread(self._handle.read, SPOOL_CHUNK)
        if not chunk:
            self._handle.close()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self._handle.close()

    def __del__(self) -> None:
        self._handle.close()
