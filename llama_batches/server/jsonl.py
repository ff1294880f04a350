"""Check an upload of purpose ``batch`` while it streams: it must be JSONL, one JSON object per line, and not empty.
OpenAI refuses such an upload with 400; so do we, before the provider keeps anything."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson

from ..errors import InvalidRequestError

__all__ = ["MAX_CHECKED_LINE_BYTES", "checked_jsonl"]

MAX_CHECKED_LINE_BYTES = 16 * 1024 * 1024
_FORMAT = "Invalid file format for Batch API. Must be .jsonl, one JSON object (a request) per line"


def _check(line: bytes, number: int) -> bool:
    """Whether ``line`` holds a request; raises for a line that is not a JSON object."""
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


async def checked_jsonl(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` unchanged, raising InvalidRequestError (param ``file``) as soon as a line is not a JSON object, and
    at the end when there was no line at all. Holds at most one line."""
    pending = bytearray()
    number, requests = 0, 0
    async for chunk in chunks:
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) != -1:
            number += 1
            requests += _check(bytes(pending[start:end]), number)
            start = end + 1
        del pending[:start]
        if len(pending) > MAX_CHECKED_LINE_BYTES:
            raise InvalidRequestError(f"Line {number + 1} is longer than {MAX_CHECKED_LINE_BYTES} bytes.", param="file")
        yield chunk
    if pending:
        requests += _check(bytes(pending), number + 1)
    if requests == 0:
        raise InvalidRequestError(f"The file is empty. {_FORMAT}.", code="empty_file", param="file")
