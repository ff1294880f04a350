"""The end of a batch: its output and error files are streamed from the checkpoints, then one fenced transition
records them with the final counts. A transition the store refuses (the batch was cancelled meanwhile, or the
lease passed on) leaves no files behind."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llama_batches.api import BatchError, BatchStatus, Endpoint, ExpiresAfter, FilePurpose
from llama_batches.api.batches import BatchErrors
from llama_batches.errors import NotFoundError
from llama_batches.storage import Fence, LeaseLost, ResultTotals

from .failures import InvariantViolation, describe
from .lines import InputLine
from .output import expired_line
from .records import BatchRecord
from .scan import input_lines
from .store import counts_from, usage_from
from .validation import ParsedLine, parse_line

if TYPE_CHECKING:
    from .runner import EngineParts

__all__ = ["Finisher"]

logger = logging.getLogger(__name__)
PAGE = 1000


@dataclass
class _Written:
    lines: int = 0


class Finisher:
    """Writes the files of one batch and moves it to a terminal status, under the runner's fence."""

    def __init__(self, parts: EngineParts, owner: str, fence: Fence | None) -> None:
        self.parts = parts
        self.owner = owner
        self.fence = fence

    async def finish(self, record: BatchRecord, final: BatchStatus) -> None:
        """Write the files from the checkpoints and enter ``final`` (completed, expired or cancelled). Before
        ``completed`` the invariant is checked: every request has exactly one line in the files."""
        totals = await self.parts.log.totals(record.id)
        total = _total(record)
        if final is BatchStatus.completed and totals.completed + totals.failed != total:
            raise InvariantViolation(f"{totals.completed + totals.failed} results recorded for {total} requests")
        written = _Written()
        files = await self._files(record, written, with_unexecuted=final is BatchStatus.expired)
        if final is BatchStatus.completed and written.lines != total:
            await self._discard(files)
            raise InvariantViolation(f"{written.lines} lines written for {total} requests")
        await self._enter(record, final, files, totals)

    async def give_up(self, record: BatchRecord, error: BatchError) -> None:
        """End the batch with ``error``, keeping its partial results in its files when they can be written: it is
        ``failed``, or ``cancelled`` when it was being cancelled (what its owner asked for, without its last step)."""
        totals = await self.parts.log.totals(record.id)
        try:
            files = await self._files(record, _Written(), with_unexecuted=False)
        except LeaseLost:
            raise
        except Exception as exc:
            logger.warning("batch %s fails without its partial results: %s", record.id, describe(exc))
            note = f" Its partial results could not be written ({describe(exc)})."
            error = error.model_copy(update={"message": (error.message or "") + note})
            files = (None, None)
        errors = BatchErrors(object="list", data=[error])
        final = BatchStatus.cancelled if record.status is BatchStatus.cancelling else BatchStatus.failed
        await self._enter(record, final, files, totals, errors=errors)

    async def _enter(
        self,
        record: BatchRecord,
        final: BatchStatus,
        files: tuple[str | None, str | None],
        totals: ResultTotals,
        **more: Any,
    ) -> None:
        try:
            moved = await self._transition(record, final, files, totals, **more)
        except LeaseLost:  # refused, so nothing refers to the files: another worker writes its own
            await self._discard(files)
            raise
        if moved is None:  # the batch changed meanwhile (a cancel); the runner starts over from what is stored
            await self._discard(files)

    async def _transition(
        self,
        record: BatchRecord,
        final: BatchStatus,
        files: tuple[str | None, str | None],
        totals: ResultTotals,
        **more: Any,
    ) -> BatchRecord | None:
        return await self.parts.store.transition(
            self.owner,
            record.id,
            final,
            int(self.parts.clock()),
            source=record.status,
            fence=self.fence,
            output_file_id=files[0],
            error_file_id=files[1],
            request_counts=counts_from(_total(record), totals),
            usage=usage_from(totals),
            **more,
        )

    async def _files(
        self, record: BatchRecord, written: _Written, *, with_unexecuted: bool
    ) -> tuple[str | None, str | None]:
        output_id = await self._upload(record, written, ok=True, with_unexecuted=False)
        try:
            error_id = await self._upload(record, written, ok=False, with_unexecuted=with_unexecuted)
        except BaseException:
            await self._discard((output_id, None))
            raise
        return output_id, error_id

    async def _discard(self, files: tuple[str | None, str | None]) -> None:
        for file_id in files:
            if file_id is None:
                continue
            try:
                await self.parts.files.openai_delete_file(file_id)
            except Exception as exc:
                logger.warning("could not delete the unused file %s: %s", file_id, describe(exc))

    async def _upload(self, record: BatchRecord, written: _Written, *, ok: bool, with_unexecuted: bool) -> str | None:
        unexecuted = self._unexecuted(record) if with_unexecuted else None
        first = await self.parts.log.read(record.id, ok=ok, limit=1)
        head = await anext(unexecuted, None) if unexecuted is not None else None
        if not first and head is None:
            return None  # OpenAI creates a file only when it has lines
        content = self._content(record.id, ok, written, head, unexecuted)
        expires = record.output_expires_after
        name = f"{record.id}_{'output' if ok else 'error'}.jsonl"
        created = await self.parts.files.openai_upload_file(
            content, FilePurpose.batch_output, name, ExpiresAfter(seconds=expires.seconds) if expires else None
        )
        return created.id

    async def _content(
        self, batch_id: str, ok: bool, written: _Written, head: bytes | None, unexecuted: AsyncIterator[bytes] | None
    ) -> AsyncIterator[bytes]:
        after = 0
        while page := await self.parts.log.read(batch_id, ok=ok, after_line=after, limit=PAGE):
            written.lines += len(page)
            yield b"".join(result.output + b"\n" for result in page)
            after = page[-1].line
        if head is not None and unexecuted is not None:
            yield head
            async for chunk in unexecuted:
                yield chunk

    async def _unexecuted(self, record: BatchRecord) -> AsyncIterator[bytes]:
        """``batch_expired`` error lines for the requests that never ran, in chunks."""
        done = await self.parts.log.done_lines(record.id)
        endpoint = Endpoint(record.batch.endpoint)
        try:
            lines = await input_lines(self.parts, record)
        except NotFoundError:
            return
        async with aclosing(lines):
            async for chunk in self._expired_chunks(lines, done, endpoint):
                yield chunk

    async def _expired_chunks(
        self, lines: AsyncGenerator[InputLine], done: set[int], endpoint: Endpoint
    ) -> AsyncIterator[bytes]:
        max_line_bytes = self.parts.config.max_line_bytes
        chunk: list[bytes] = []
        async for line in lines:
            parsed = parse_line(line.number, line.data, endpoint, max_line_bytes)
            if line.number in done or not isinstance(parsed, ParsedLine):
                continue
            chunk.append(expired_line(parsed.custom_id) + b"\n")
            if len(chunk) >= PAGE:
                yield b"".join(chunk)
                chunk.clear()
        if chunk:
            yield b"".join(chunk)


def _total(record: BatchRecord) -> int:
    return record.batch.request_counts.total if record.batch.request_counts else 0
