"""Shared parts of the batches benchmark: the fake backend as a subprocess, the stack's run config, input files
written to disk and uploaded by streaming, batch driving, RSS sampling and the results table.

The repository root must be on ``sys.path`` before this module is imported (``bench_batches.py`` does it). The fake
backend is ``python -m tests.fake_backend`` run as a child process from the repository root; nothing is imported from
``tests/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import orjson

from llama_batches import Stack
from llama_batches.api import Batch, FilePurpose

__all__ = [
    "CHAT",
    "MB",
    "ROOT",
    "BackendProcess",
    "Result",
    "RssSampler",
    "batch_line",
    "chat_body",
    "print_table",
    "run_batch",
    "run_workers",
    "stack_config",
    "upload",
    "write_input",
]

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/v1/chat/completions"
MODEL = "fake-model"
MB = 1024 * 1024
CHUNK = MB
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_PAGE = os.sysconf("SC_PAGE_SIZE")
T = TypeVar("T")


# the fake backend, in its own process --------------------------------------------------------------------------


class BackendProcess:
    """``python -m tests.fake_backend`` as a child process (its own core); ``base_url`` ends in ``/v1``."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.base_url = ""
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> BackendProcess:
        args = ["-m", "tests.fake_backend", "--port", "0", "--latency-ms", str(self.latency_ms)]
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        assert self._proc.stdout is not None
        line = (await asyncio.wait_for(self._proc.stdout.readline(), timeout=30)).decode().strip()
        if not line.startswith("READY "):
            await self._stop()
            raise RuntimeError(f"the fake backend did not start: {line!r}")
        self.base_url = line.split()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stats(self) -> dict[str, Any]:
        """The backend's counters (``GET /_stats``)."""
        async with aiohttp.ClientSession() as session, session.get(self.base_url.removesuffix("/v1") + "/_stats") as r:
            r.raise_for_status()
            stats: dict[str, Any] = orjson.loads(await r.read())
            return stats


# requests and input files --------------------------------------------------------------------------------------


def chat_body(i: int, content_bytes: int = 0) -> dict[str, Any]:
    """A chat request whose message (the backend's request identity) is unique to ``i``, padded to the size."""
    content = f"hello {i}"
    if content_bytes > len(content):
        pad = "lorem ipsum " * (content_bytes // 12 + 1)
        content = (content + " " + pad)[:content_bytes]
    return {"model": MODEL, "messages": [{"role": "user", "content": content}]}


def batch_line(i: int, content_bytes: int = 0) -> bytes:
    """Line ``i`` of a batch input file."""
    line = {"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": chat_body(i, content_bytes)}
    return orjson.dumps(line) + b"\n"


def write_input(path: Path, n: int, content_bytes: int = 0, start: int = 0) -> int:
    """Write an ``n``-line input file to disk, 1,000 lines at a time; returns its size in bytes."""
    size = 0
    with path.open("wb") as handle:
        for first in range(start, start + n, 1000):
            chunk = b"".join(batch_line(i, content_bytes) for i in range(first, min(first + 1000, start + n)))
            handle.write(chunk)
            size += len(chunk)
    return size


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file's content read from disk chunk by chunk (never whole)."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        handle.close()


async def upload(stack: Stack, path: Path) -> str:
    """Upload ``path`` as a batch input by streaming it from disk; returns the file id."""
    created = await stack.files.openai_upload_file(_file_chunks(path), FilePurpose.batch, path.name)
    return created.id


def stack_config(directory: Path, base_url: str, *, per_batch: int, global_cap: int = 256) -> dict[str, Any]:
    """inline::reference (SQLite in ``directory``) + inline::localfs + remote::openai on ``base_url``."""
    engine = {
        "kvstore": {"backend": "sql_default", "namespace": "batches"},
        "max_concurrent_requests_per_batch": per_batch,
        "max_concurrent_requests": max(global_cap, per_batch),
    }
    files = {
        "storage_dir": str(directory / "files"),
        "metadata_store": {"backend": "sql_default", "table_name": "files_metadata"},
    }
    providers = {
        "batches": [{"provider_id": "ref", "provider_type": "inline::reference", "config": engine}],
        "files": [{"provider_id": "localfs", "provider_type": "inline::localfs", "config": files}],
        "inference": [
            {"provider_id": "fake", "provider_type": "remote::openai", "config": {"base_url": base_url, "api_key": "x"}}
        ],
    }
    return {
        "version": 2,
        "apis": list(providers),
        "providers": providers,
        "storage": {"backends": {"sql_default": {"type": "sql_sqlite", "db_path": str(directory / "sql.db")}}},
        "registered_resources": {"models": []},
    }


# driving -------------------------------------------------------------------------------------------------------


async def wait_done(stack: Stack, batch: Batch, poll_s: float = 0.02) -> Batch:
    """Poll ``retrieve_batch`` every ``poll_s`` until the batch is terminal."""
    while batch.status not in TERMINAL:
        await asyncio.sleep(poll_s)
        batch = await stack.batches.retrieve_batch(batch.id)
    return batch


async def run_batch(stack: Stack, file_id: str, key: str | None = None) -> tuple[Batch, float]:
    """Create a chat batch and wait for it; returns it and the seconds from create_batch to terminal status."""
    start = time.perf_counter()
    batch = await stack.batches.create_batch(file_id, CHAT, "24h", idempotency_key=key)
    batch = await wait_done(stack, batch)
    return batch, time.perf_counter() - start


async def run_workers(items: Iterable[T], work: Callable[[T], Awaitable[None]], concurrency: int) -> None:
    """``work`` on every item with ``concurrency`` workers pulling from one iterator."""
    shared: Iterator[T] = iter(items)

    async def worker() -> None:
        for item in shared:
            await work(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# memory --------------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size, from ``/proc/self/statm``."""
    with open("/proc/self/statm", "rb") as handle:
        return int(handle.read().split()[1]) * _PAGE


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Peak RSS while the block runs, sampled every ``interval_s`` (and cross-checked with ``ru_maxrss``)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.baseline = self.peak = 0
        self._max_before = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def growth(self) -> int:
        """Peak minus the RSS at entry, in bytes."""
        return self.peak - self.baseline

    async def __aenter__(self) -> RssSampler:
        self.baseline = self.peak = rss_bytes()
        self._max_before = _max_rss_bytes()
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak = max(self.peak, rss_bytes())
        max_after = _max_rss_bytes()
        if max_after > self._max_before:  # a new lifetime peak was set inside the block: exact, not sampled
            self.peak = max(self.peak, max_after)

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes())
            await asyncio.sleep(self.interval_s)


# results -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One row of the results table; ``ok`` is None for figures shown for reference only."""

    scenario: str
    metric: str
    goal: str
    value: str
    ok: bool | None


def print_table(results: list[Result]) -> None:
    """The compact results table."""
    header = ("scenario", "metric", "goal", "measured", "result")
    rows = [header] + [
        (r.scenario, r.metric, r.goal, r.value, "-" if r.ok is None else "PASS" if r.ok else "MISS") for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    line = "-+-".join("-" * w for w in widths)
    print("\n" + line)
    for index, row in enumerate(rows):
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if index == 0:
            print(line)
    print(line)
