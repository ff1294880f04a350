"""``llama-batches run``: a JSONL file through a stack built in this process, with a progress bar.

Creation is idempotent: the key defaults to a hash of the file's content, and the uploaded file is found again by
its content hash, so running the same command after an interruption resumes the batch instead of starting over.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .api import TERMINAL_BATCH_STATUSES, Batch, FilePurpose, Files
from .errors import InvalidRequestError
from .logs import configure_logging
from .stack import Stack, build_stack

__all__ = ["RunPlan", "run_file"]

CHUNK = 1024 * 1024
POLL_S = 0.2


@dataclass(frozen=True)
class RunPlan:
    """What ``llama-batches run`` was asked to do."""

    config: Path
    input: Path
    output: Path
    errors: Path
    idempotency_key: str | None = None
    completion_window: str = "24h"
    log_level: str | None = "info"
    """Log records at this level and above go to stderr, from before the stack is built; None leaves logging as
    it is."""


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _endpoint(path: Path) -> str:
    """The ``url`` of the file's first request: the batch's endpoint."""
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                try:
                    url = orjson.loads(line).get("url")
                except (orjson.JSONDecodeError, AttributeError):
                    url = None
                if isinstance(url, str):
                    return url
                break
    raise InvalidRequestError(
        f"{path}: the first line is not a request with a 'url' (JSONL batch format)", param="input"
    )


async def _read(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        handle.close()


async def _find_or_upload(files: Files, path: Path, digest: str) -> str:
    """The id of this content uploaded earlier (found by its name), or of a new upload."""
    name = f"{digest[:16]}-{path.name}"
    after: str | None = None
    while True:
        page = await files.openai_list_files(after=after, limit=1000, purpose=FilePurpose.batch)
        for existing in page.data:
            if existing.filename == name:
                return existing.id
        if not page.has_more or not page.data:
            break
        after = page.data[-1].id
    return (await files.openai_upload_file(_read(path), FilePurpose.batch, name)).id


async def _download(files: Files, file_id: str | None, target: Path) -> bool:
    if file_id is None:
        return False
    stream = await files.openai_retrieve_file_content(file_id)
    with target.open("wb") as handle:
        async for chunk in stream:
            await asyncio.to_thread(handle.write, chunk)
    return True


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.fields[status]:<11}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[rate]:>7.1f} req/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _finished(batch: Batch) -> int:
    counts = batch.request_counts
    return (counts.completed + counts.failed) if counts else 0


async def _follow(stack: Stack, batch: Batch, console: Console) -> Batch:
    started, done_before = time.monotonic(), _finished(batch)
    with _progress(console) as progress:
        task = progress.add_task("batch", total=None, status=batch.status, counts="", rate=0.0)
        while True:
            batch = await stack.batches.retrieve_batch(batch.id)
            _show(progress, task, batch, (_finished(batch) - done_before) / max(time.monotonic() - started, 1e-6))
            if batch.status in TERMINAL_BATCH_STATUSES:
                return batch
            await asyncio.sleep(POLL_S)


def _show(progress: Progress, task: TaskID, batch: Batch, rate: float) -> None:
    counts = batch.request_counts
    done = _finished(batch)
    total = counts.total if counts and counts.total else None
    ok, failed = (counts.completed, counts.failed) if counts else (0, 0)
    text = f"{done}/{total or '?'}  completed {ok}  failed {failed}"
    progress.update(task, completed=done, total=total, status=batch.status, counts=text, rate=rate)


async def run_file(plan: RunPlan, console: Console) -> Batch:
    """Run ``plan.input`` as one batch and write its output (and errors, if any) to ``plan.output``/``plan.errors``."""
    if plan.log_level is not None:
        configure_logging(plan.log_level)
    digest = await asyncio.to_thread(_digest, plan.input)
    endpoint = _endpoint(plan.input)
    key = plan.idempotency_key or f"run-{digest[:32]}"
    async with build_stack(plan.config) as stack:
        file_id = await _find_or_upload(stack.files, plan.input, digest)
        batch = await stack.batches.create_batch(
            file_id, endpoint, plan.completion_window, metadata={"source": plan.input.name}, idempotency_key=key
        )
        console.print(f"batch [bold]{batch.id}[/] (idempotency key {key})", highlight=False)
        batch = await _follow(stack, batch, console)
        if await _download(stack.files, batch.output_file_id, plan.output):
            console.print(f"output: {plan.output}", highlight=False)
        if await _download(stack.files, batch.error_file_id, plan.errors):
            console.print(f"errors: {plan.errors}", highlight=False)
    return batch
