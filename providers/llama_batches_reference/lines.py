"""Split a file's byte stream into JSONL lines without holding more than one line (bounded) in memory."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass

__all__ = ["InputLine", "InputTooLarge", "iter_lines"]


@dataclass(frozen=True, slots=True)
class InputLine:
    """A non-blank input line (1-based ``number``); ``data`` is None when the line exceeded the size limit."""

    number: int
    data: bytes | None


class InputTooLarge(Exception):
    """The stream is longer than the byte limit."""


async def iter_lines(chunks: AsyncIterable[bytes], *, max_line_bytes: int, max_bytes: int) -> AsyncGenerator[InputLine]:
    """The lines of ``chunks``; blank lines are skipped (but counted). Raises InputTooLarge past ``max_bytes``.
    ``chunks`` is closed when this generator is (use ``contextlib.aclosing`` when stopping early)."""
    try:
        async for line in _split(chunks, max_line_bytes, max_bytes):
            yield line
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def _split(chunks: AsyncIterable[bytes], max_line_bytes: int, max_bytes: int) -> AsyncIterator[InputLine]:
    buffer = bytearray()
    number, total, oversized = 0, 0, False
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise InputTooLarge(total)
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            number += 1
            if not oversized and len(buffer) + end - start <= max_line_bytes:
                buffer += chunk[start:end]
                if buffer.strip():
                    yield InputLine(number, bytes(buffer))
            else:
                yield InputLine(number, None)
            buffer.clear()
            oversized, start = False, end + 1
        if not oversized:
            buffer += chunk[start:]
            if len(buffer) > max_line_bytes:
                oversized = True
                buffer.clear()
    if oversized:
        yield InputLine(number + 1, None)
    elif buffer.strip():
        yield InputLine(number + 1, bytes(buffer))
