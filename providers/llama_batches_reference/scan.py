"""Validation of a batch's input: the file is streamed once to count its requests, note the model and collect
per-line errors (bounded in number and in bytes, so a file of bad lines cannot make a batch object huge)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llama_batches.api import BatchError, Endpoint
from llama_batches.errors import NotFoundError, quoted

from .lines import InputLine, InputTooLarge, iter_lines
from .records import BatchRecord
from .validation import (
    ParsedLine,
    duplicate_custom_id_error,
    mismatched_model_error,
    model_not_found_error,
    parse_line,
)

if TYPE_CHECKING:
    from .runner import EngineParts

__all__ = ["Scan", "input_lines", "scan"]


@dataclass
class Scan:
    """What one pass over the input found."""

    total: int = 0
    model: str | None = None
    errors: list[BatchError] = field(default_factory=list)
    error_bytes: int = 0


async def input_lines(parts: EngineParts, record: BatchRecord) -> AsyncGenerator[InputLine]:
    """The lines of the batch's input file (NotFoundError when it is gone; InputTooLarge past the byte limit)."""
    config = parts.config
    stream = await parts.files.openai_retrieve_file_content(record.batch.input_file_id)
    return iter_lines(stream, max_line_bytes=config.max_line_bytes, max_bytes=config.max_input_bytes)


def _file_error(code: str, message: str) -> Scan:
    return Scan(errors=[BatchError(code=code, message=message, param="input_file_id", line=None)])


async def scan(parts: EngineParts, record: BatchRecord) -> Scan:
    """Stream the input once: count requests, collect per-line errors, note the model."""
    file_id = record.batch.input_file_id
    try:
        async with aclosing(await input_lines(parts, record)) as lines:
            found = await _Scanner(parts, Endpoint(record.batch.endpoint)).run(lines)
    except NotFoundError:
        return _file_error("invalid_request", f"Cannot find file {quoted(file_id)}, or you do not have access to it.")
    except InputTooLarge:
        limit = parts.config.max_input_bytes
        return _file_error("file_too_large", f"The input file is larger than the limit of {limit} bytes.")
    if not found.errors and found.total == 0:
        return _file_error("empty_file", "The input file has no requests.")
    return found


class _Scanner:
    def __init__(self, parts: EngineParts, endpoint: Endpoint) -> None:
        self.parts = parts
        self.config = parts.config
        self.endpoint = endpoint
        self.seen_ids: set[str] = set()
        self.known_models: dict[str, bool] = {}
        self.found = Scan()

    async def run(self, lines: AsyncGenerator[InputLine]) -> Scan:
        found, limit = self.found, self.config.max_requests_per_batch
        async for line in lines:
            found.total += 1
            if found.total > limit:
                message = f"The input file has more than {limit} requests."
                return Scan(total=found.total, errors=[BatchError(code="too_many_requests", message=message)])
            parsed = parse_line(line.number, line.data, self.endpoint, self.config.max_line_bytes)
            if isinstance(parsed, ParsedLine):
                parsed = await self._check_unique(parsed)
            if isinstance(parsed, ParsedLine) and found.model not in (None, parsed.model):
                parsed = mismatched_model_error(parsed.number, parsed.model)
            if isinstance(parsed, ParsedLine):
                found.model = parsed.model
            else:
                self._report(parsed)
        return found

    def _report(self, error: BatchError) -> None:
        """Keep ``error`` while the list is under both caps (count and bytes); the batch fails either way."""
        found, size = self.found, len(error.message or "") + 64
        if len(found.errors) < self.config.max_reported_errors and found.error_bytes + size <= self._byte_cap:
            found.errors.append(error)
            found.error_bytes += size

    @property
    def _byte_cap(self) -> int:
        return self.config.max_reported_error_bytes

    async def _check_unique(self, parsed: ParsedLine) -> ParsedLine | BatchError:
        if parsed.custom_id in self.seen_ids:
            return duplicate_custom_id_error(parsed.number, parsed.custom_id)
        self.seen_ids.add(parsed.custom_id)
        known = self.known_models
        if parsed.model not in known:
            try:
                await self.parts.models.get_model(parsed.model)
                known[parsed.model] = True
            except NotFoundError:
                known[parsed.model] = False
        if not known[parsed.model]:
            return model_not_found_error(parsed.number, parsed.model)
        return parsed
