"""One batch's life after creation: validate, execute, finalize. Every step starts from what the store says, so a
runner started after a crash picks up where the last one stopped.

validating -> (failed | in_progress) -> (finalizing -> completed | expired | cancelling -> cancelled)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from llama_batches.api import BatchError, BatchStatus, Endpoint, ExpiresAfter, FilePurpose, Files, Models
from llama_batches.api.batches import BatchErrors
from llama_batches.errors import NotFoundError
from llama_batches.principal import acting_as
from llama_batches.storage import ResultLog, ResultTotals

from .config import ReferenceBatchesImplConfig
from .dispatch import Dispatcher, StopReason
from .executor import RequestExecutor
from .lines import InputLine, InputTooLarge, iter_lines
from .output import expired_line
from .records import BatchRecord
from .store import BatchStore, counts_from, usage_from
from .validation import ParsedLine, parse_line

__all__ = ["BatchRunner", "EngineParts"]

logger = logging.getLogger(__name__)
PAGE = 1000


@dataclass
class EngineParts:
    """What every runner of one engine shares."""

    config: ReferenceBatchesImplConfig
    store: BatchStore
    log: ResultLog
    files: Files
    models: Models
    executor: RequestExecutor
    clock: Callable[[], float]
    request_slots: asyncio.Semaphore


class BatchRunner:
    """Drives one batch to a terminal status."""

    def __init__(self, parts: EngineParts, owner: str, batch_id: str) -> None:
        self.parts = parts
        self.owner = owner
        self.batch_id = batch_id
        self.cancel_requested = asyncio.Event()
        self.dispatcher: Dispatcher | None = None

    def _now(self) -> int:
        return int(self.parts.clock())

    async def run(self) -> None:
        """Take the batch through its remaining steps."""
        with acting_as(self.owner):
            while True:
                record = await self.parts.store.get(self.owner, self.batch_id)
                status = record.status
                if status in (BatchStatus.validating, BatchStatus.in_progress) and self._expired(record):
                    await self._finish(record, BatchStatus.expired)
                elif status is BatchStatus.validating:
                    await self._validate(record)
                elif status is BatchStatus.in_progress:
                    await self._execute(record)
                elif status is BatchStatus.finalizing:
                    await self._finish(record, BatchStatus.completed)
                elif status is BatchStatus.cancelling:
                    await self._finish(record, BatchStatus.cancelled)
                else:
                    return

    def _expired(self, record: BatchRecord) -> bool:
        expires_at = record.batch.expires_at
        return expires_at is not None and self.parts.clock() >= expires_at

    async def _transition(self, record: BatchRecord, source: BatchStatus, **changes: object) -> None:
        def change(current: BatchRecord) -> BatchRecord | None:
            return current.updated(**changes) if current.status is source else None

        await self.parts.store.update(self.owner, record.id, change)

    async def _fail(self, record: BatchRecord, errors: list[BatchError]) -> None:
        await self._transition(
            record,
            BatchStatus.validating,
            status=BatchStatus.failed.value,
            failed_at=self._now(),
            errors=BatchErrors(object="list", data=errors),
        )

    async def _validate(self, record: BatchRecord) -> None:
        file_id = record.batch.input_file_id
        try:
            total, model, errors = await self._scan(record)
        except NotFoundError:
            message = f"Cannot find file {file_id}, or you do not have access to it."
            errors = [BatchError(code="invalid_request", message=message, param="input_file_id", line=None)]
        except InputTooLarge:
            limit = self.parts.config.max_input_bytes
            message = f"The input file is larger than the limit of {limit} bytes."
            errors = [BatchError(code="file_too_large", message=message, param="input_file_id", line=None)]
        else:
            if not errors and total == 0:
                message = "The input file has no requests."
                errors = [BatchError(code="empty_file", message=message, param="input_file_id", line=None)]
        if errors:
            await self._fail(record, errors)
            return
        await self._transition(
            record,
            BatchStatus.validating,
            status=BatchStatus.in_progress.value,
            in_progress_at=self._now(),
            model=model,
            request_counts=counts_from(total, ResultTotals()),
        )

    async def _scan(self, record: BatchRecord) -> tuple[int, str | None, list[BatchError]]:
        """Stream the input once: count requests, collect per-line errors (bounded), note the model."""
        endpoint = Endpoint(record.batch.endpoint)
        errors: list[BatchError] = []
        async with aclosing(await self._lines(record)) as lines:
            return await self._scan_lines(lines, endpoint, errors)

    async def _scan_lines(
        self, lines: AsyncGenerator[InputLine], endpoint: Endpoint, errors: list[BatchError]
    ) -> tuple[int, str | None, list[BatchError]]:
        config = self.parts.config
        seen_ids: set[str] = set()
        known_models: dict[str, bool] = {}
        total, model = 0, None
        async for line in lines:
            total += 1
            if total > config.max_requests_per_batch:
                message = f"The input file has more than {config.max_requests_per_batch} requests."
                return total, model, [BatchError(code="too_many_requests", message=message, param="input_file_id")]
            parsed = parse_line(line.number, line.data, endpoint, config.max_line_bytes)
            if isinstance(parsed, ParsedLine):
                model = model or parsed.model
                parsed = await self._check_unique(parsed, seen_ids, known_models)
            if isinstance(parsed, BatchError) and len(errors) < config.max_reported_errors:
                errors.append(parsed)
        return total, model, errors

    async def _check_unique(
        self, parsed: ParsedLine, seen_ids: set[str], known_models: dict[str, bool]
    ) -> ParsedLine | BatchError:
        if parsed.custom_id in seen_ids:
            message = (
                f"The custom_id '{parsed.custom_id}' for this request is a duplicate of another request. "
                "The custom_id parameter must be unique for each request in a batch."
            )
            return BatchError(code="duplicate_custom_id", message=message, param="custom_id", line=parsed.number)
        seen_ids.add(parsed.custom_id)
        if parsed.model not in known_models:
            try:
                await self.parts.models.get_model(parsed.model)
                known_models[parsed.model] = True
            except NotFoundError:
                known_models[parsed.model] = False
        if not known_models[parsed.model]:
            message = f"The provided model '{parsed.model}' is not supported by the Batch API."
            return BatchError(code="model_not_found", message=message, param="body.model", line=parsed.number)
        return parsed

    async def _lines(self, record: BatchRecord) -> AsyncGenerator[InputLine]:
        config = self.parts.config
        stream = await self.parts.files.openai_retrieve_file_content(record.batch.input_file_id)
        return iter_lines(stream, max_line_bytes=config.max_line_bytes, max_bytes=config.max_input_bytes)

    async def _execute(self, record: BatchRecord) -> None:
        dispatcher = Dispatcher(self.parts, self.owner, record, self.cancel_requested)
        self.dispatcher = dispatcher
        try:
            reason = await dispatcher.run()
        finally:
            self.dispatcher = None
        if reason is StopReason.done:
            await self._transition(
                record, BatchStatus.in_progress, status=BatchStatus.finalizing.value, finalizing_at=self._now()
            )
        elif reason is StopReason.expired:
            await self._finish(await self.parts.store.get(self.owner, record.id), BatchStatus.expired)
        # cancelled: the batch is `cancelling` in the store; run() finishes it

    async def _finish(self, record: BatchRecord, final: BatchStatus) -> None:
        """Write the output and error files from the checkpoints and enter the terminal status ``final``."""
        source = record.status
        totals = await self.parts.log.totals(record.id)
        output_id = await self._upload(record, ok=True, with_unexecuted=False)
        error_id = await self._upload(record, ok=False, with_unexecuted=final is BatchStatus.expired)
        now = self._now()
        stamp = {BatchStatus.completed: "completed_at", BatchStatus.expired: "expired_at"}.get(final, "cancelled_at")
        total = record.batch.request_counts.total if record.batch.request_counts else 0
        await self._transition(
            record,
            source,
            status=final.value,
            output_file_id=output_id,
            error_file_id=error_id,
            request_counts=counts_from(total, totals),
            usage=usage_from(totals),
            **{stamp: now},
        )

    async def _upload(self, record: BatchRecord, *, ok: bool, with_unexecuted: bool) -> str | None:
        log = self.parts.log
        unexecuted = self._unexecuted(record) if with_unexecuted else None
        first = await log.read(record.id, ok=ok, limit=1)
        head = await anext(unexecuted, None) if unexecuted is not None else None
        if not first and head is None:
            return None  # OpenAI creates a file only when it has lines
        content = self._content(record.id, ok, head, unexecuted)
        expires = record.output_expires_after
        name = f"{record.id}_{'output' if ok else 'error'}.jsonl"
        created = await self.parts.files.openai_upload_file(
            content, FilePurpose.batch_output, name, ExpiresAfter(seconds=expires.seconds) if expires else None
        )
        return created.id

    async def _content(
        self, batch_id: str, ok: bool, head: bytes | None, unexecuted: AsyncIterator[bytes] | None
    ) -> AsyncIterator[bytes]:
        after = 0
        while page := await self.parts.log.read(batch_id, ok=ok, after_line=after, limit=PAGE):
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
            lines = await self._lines(record)
        except NotFoundError:
            return
        async with aclosing(lines):
            async for chunk in self._expired_chunks(lines, done, endpoint):
                yield chunk

    async def _expired_chunks(
        self, lines: AsyncGenerator[InputLine], done: set[int], endpoint: Endpoint
    ) -> AsyncIterator[bytes]:
        config = self.parts.config
        chunk: list[bytes] = []
        async for line in lines:
            parsed = parse_line(line.number, line.data, endpoint, config.max_line_bytes)
            if line.number in done or not isinstance(parsed, ParsedLine):
                continue
            chunk.append(expired_line(parsed.custom_id) + b"\n")
            if len(chunk) >= PAGE:
                yield b"".join(chunk)
                chunk.clear()
        if chunk:
            yield b"".join(chunk)
