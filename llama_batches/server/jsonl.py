"""Check an upload of purpose ``batch`` while it streams, as OpenAI and llama-stack do: a UTF-8 byte order mark at the
start is dropped (from what is checked and from what is stored), and a file that is empty or whose first line is not
a JSON object is a 400 ``Invalid file format for Batch API. Must be .jsonl...`` before the provider keeps anything.
The other lines are checked when a batch runs, each bad one reported with its line number (``invalid_json_line``);
with ``every_line`` they are all checked here instead (``server.uploads.jsonl_check: every_line``).

The check runs on the event loop, so its cost is bounded per byte, whatever the input: blank lines (ASCII whitespace,
as the batch runner skips them) are skipped with C-speed searches, and more than ``MAX_LEADING_BLANK_BYTES`` of them
before the first line is the 400 of an empty file; a line is searched for its end once, however it is cut into
chunks; and a line is held once, at most ``MAX_CHECKED_LINE_BYTES``, and parsed in place (no copy of it). What
checking a line holds at its peak is that line plus what parsing it costs: about twice the line again for a request
whose bulk is a string such as a prompt (orjson's document, then the Python string), up to about 30 times the line
for a line of empty objects or lists (a Python object each), as the batch runner's own parse of the line would.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson

from ..errors import InvalidRequestError

__all__ = ["BOM", "MAX_CHECKED_LINE_BYTES", "MAX_LEADING_BLANK_BYTES", "checked_jsonl", "without_bom"]

BOM = b"\xef\xbb\xbf"
MAX_CHECKED_LINE_BYTES = 16 * 1024 * 1024
MAX_LEADING_BLANK_BYTES = 1024 * 1024
_FORMAT = "Invalid file format for Batch API. Must be .jsonl, one JSON object (a request) per line"
_NOT_BLANK = re.compile(rb"[^ \t\n\r\x0b\x0c]")  # what bytes.strip() keeps: a line of only these is blank


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


def _invalid(message: str, code: str = "invalid_file_format") -> InvalidRequestError:
    return InvalidRequestError(f"{_FORMAT}: {message}", code=code, param="file")


class _Lines:
    """Splits chunks into lines, holding at most the current one (``MAX_CHECKED_LINE_BYTES``), and checks them.

    ``pending`` holds the current line from its start; ``scanned`` is how much of it is known to hold no newline
    (and, while ``content`` is False, only blanks): no byte is searched twice."""

    def __init__(self) -> None:
        self.pending = bytearray()
        self.scanned = 0
        self.content = False
        self.number = self.requests = self.blank = 0

    def feed(self, chunk: bytes, *, every_line: bool) -> bool:
        """Check the complete lines ``chunk`` ends; whether checking can stop (a request line seen, first_line)."""
        self.pending += chunk
        start = 0  # where the current line starts in pending
        while True:
            if not self.content:
                start = self._skip_blanks(start)
                if not self.content:
                    break
            end = self.pending.find(b"\n", self.scanned)
            if end == -1:
                self.scanned = len(self.pending)
                break
            self.number += 1
            self._check(start, end)
            if not every_line:
                self.pending.clear()
                return True
            start = self.scanned = end + 1
            self.content = False
        del self.pending[:start]
        self.scanned -= start
        if len(self.pending) > MAX_CHECKED_LINE_BYTES:
            raise _invalid(f"line {self.number + 1} is longer than {MAX_CHECKED_LINE_BYTES} bytes.")
        return False

    def _skip_blanks(self, start: int) -> int:
        """Skip blanks from ``scanned`` on, counting the lines they end; where the current line now starts. Sets
        ``content`` when a byte that is not blank follows. Bounds the blanks before the first request."""
        found = _NOT_BLANK.search(self.pending, self.scanned)
        stop = len(self.pending) if found is None else found.start()
        last = self.pending.rfind(b"\n", self.scanned, stop)
        if last != -1:
            self.number += self.pending.count(b"\n", self.scanned, stop)
            start = last + 1
        if not self.requests:
            self.blank += stop - self.scanned
            if self.blank > MAX_LEADING_BLANK_BYTES:
                message = f"the file is empty (more than {MAX_LEADING_BLANK_BYTES} blank bytes before its first line)."
                raise _invalid(message, "empty_file")
        self.scanned, self.content = stop, found is not None
        return start

    def _check(self, start: int, end: int) -> None:
        """Parse ``pending[start:end]`` (a line that is not blank) in place; raise unless it is a JSON object."""
        with memoryview(self.pending)[start:end] as line:
            try:
                parsed = orjson.loads(line)
            except orjson.JSONDecodeError:
                parsed = None
        if not isinstance(parsed, dict):
            raise _invalid(f"line {self.number} is not a JSON object.")
        self.requests += 1

    def finish(self) -> None:
        """Check the last line (without a newline); raise when the file held no request at all."""
        if self.content:
            self.number += 1
            self._check(0, len(self.pending))
        if self.requests == 0:
            raise _invalid("the file is empty.", "empty_file")


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
