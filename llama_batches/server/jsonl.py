"""Check an upload of purpose ``batch`` while it streams, as OpenAI and llama-stack do: a UTF-8 byte order mark at the
start is dropped (from what is checked and from what is stored), and a file that is empty or whose first line is not
a JSON object is a 400 ``Invalid file format for Batch API. Must be .jsonl...`` before the provider keeps anything.
The other lines are checked when a batch runs, each bad one reported with its line number (``invalid_json_line``);
with ``every_line`` they are all checked here instead (``server.uploads.jsonl_check: every_line``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from ..errors import InvalidRequestError

__all__ = ["BOM", "MAX_CHECKED_LINE_BYTES", "checked_jsonl", "without_bom"]

BOM = b"\xef\xbb\xbf"
MAX_CHECKED_LINE_BYTES = 16 * 1024 * 1024
_FORMAT = "Invalid file format for Batch API. Must be .jsonl, one JSON object (a request) per line"


async def without_bom(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` without a UTF-8 byte order mark at the very start (however the first chunks are cut)."""
    head = bytearray()
    async for chunk in chunks:
        head += chunk
        if len(head) >= len(BOM):
            break
    if head.startswith(BOM):
        del head[: len(BOM)]
    if head:
        yield bytes(head)
    async for chunk in chunks:
        yield chunk


def _check(line: bytes, number: int) -> bool:
    """Whether ``line`` holds a request (False for a blank line); raises for a line that is not a JSON object."""
    if not line.strip():
        return False
    try:
        parsed = orjson.loads(line)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequestError(
            f"{_FORMAT}: line {number} is not a JSON object.", code="invalid_file_format", param="file"
        )
    return True


class _Lines:
    """Splits chunks into lines, holding at most one (``MAX_CHECKED_LINE_BYTES``), and checks them."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.number = self.requests = 0

    def feed(self, chunk: bytes, *, every_line: bool) -> bool:
        """Check the complete lines ``chunk`` ends; whether checking can stop (a request line seen, first_line)."""
        self.pending += chunk
        start = 0
        while (end := self.pending.find(b"\n", start)) != -1:
            self.number += 1
            self.requests += _check(bytes(self.pending[start:end]), self.number)
            start = end + 1
            if self.requests and not every_line:
                self.pending.clear()
                return True
        del self.pending[:start]
        if len(self.pending) > MAX_CHECKED_LINE_BYTES:
            message = f"{_FORMAT}: line {self.number + 1} is longer than {MAX_CHECKED_LINE_BYTES} bytes."
            raise InvalidRequestError(message, code="invalid_file_format", param="file")
        return False

    def finish(self) -> None:
        """Check the last line (without a newline); raise when the file held no request at all."""
        if self.pending:
            self.requests += _check(bytes(self.pending), self.number + 1)
        if self.requests == 0:
            raise InvalidRequestError(f"{_FORMAT}: the file is empty.", code="empty_file", param="file")


async def checked_jsonl(chunks: AsyncIterator[bytes], *, every_line: bool = False) -> AsyncIterator[bytes]:
    """``chunks`` without a leading byte order mark, raising InvalidRequestError (param ``file``) when the file has
    no request line or its first non-blank line (with ``every_line``: any line) is not a JSON object."""
    lines = _Lines()
    done = False
    async for chunk in without_bom(chunks):
        if not done:
            done = lines.feed(chunk, every_line=every_line)
        yield chunk
    if not done:
        lines.finish()
