"""The parts of ``bench_llama_stack.py`` beyond throughput and the race: latency-bound, memory with a large input
file, and ``kill -9`` of the server mid-batch. Each takes a running server (or starts its own) and the fake backend,
and returns what it measured; a provider that fails is a measured result, not an exception."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from openai import AsyncOpenAI

from bench._harness import BackendProcess
from bench._procs import LlamaStackServer
from bench._stack_parts import (
    POLL_S,
    TERMINAL,
    TreeRss,
    backend_call,
    client_for,
    input_lines,
    run_batch,
    until_terminal,
    upload,
)

__all__ = ["Kill", "Latency", "Memory", "kill_mid_batch", "latency_bound", "memory"]

MB = 1024 * 1024


@dataclass
class Latency:
    status: str = "not run"
    lines: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    ceiling: float = 0.0


async def latency_bound(client: AsyncOpenAI, lines: int, ceiling: float, deadline_s: float) -> Latency:
    """One ``lines``-line batch on a slow backend; requests/s against the ceiling concurrency / latency."""
    file_id = await upload(client, input_lines(lines, "lat"), "latency.jsonl")
    batch, elapsed = await run_batch(client, file_id, deadline_s)
    done = batch.request_counts.completed if batch.request_counts else 0
    result = Latency(batch.status, lines, elapsed, ceiling=ceiling)
    if batch.status == "completed" and done == lines:
        result.rps = lines / elapsed
    else:
        result.status += f" ({done} of {lines} completed)"
    return result


@dataclass
class Memory:
    status: str = "not run"
    input_mb: float = 0.0
    lines: int = 0
    seconds: float = 0.0
    baseline_mb: float = 0.0
    upload_peak_mb: float = 0.0
    batch_peak_mb: float = 0.0
    hwm_mb: float = 0.0


async def memory(
    client: AsyncOpenAI, pid: int, input_mb: float, line_kb: float, deadline_s: float, result: Memory
) -> None:
    """Upload an ``input_mb`` input file of ``line_kb`` lines, then run it; the server's RSS (its process tree,
    sampled every 50 ms) before, at its peak during the upload and during the batch, and its VmHWM. Fills
    ``result`` as it goes, so a part that fails half-way still shows what it measured."""
    lines = max(1, int(input_mb * 1024 / line_kb))
    content = input_lines(lines, "mem", pad_bytes=int(line_kb * 1024) - 150)
    result.input_mb, result.lines, result.status = len(content) / MB, lines, "uploading"
    rss = TreeRss(pid)
    try:
        async with rss:
            result.baseline_mb = rss.baseline_mb
            file_id = await upload(client, content, "memory.jsonl")
            del content
            result.upload_peak_mb, result.status = max(rss.peak_mb, rss.rss_mb()), "running"
            start = time.monotonic()
            try:
                batch, result.seconds = await run_batch(client, file_id, deadline_s)
            finally:
                result.seconds = result.seconds or time.monotonic() - start
        done = batch.request_counts.completed if batch.request_counts else 0
        result.status = f"{batch.status}, {done} of {lines} completed"
    except Exception as exc:
        result.status += f", then {type(exc).__name__}"
        raise
    finally:
        result.batch_peak_mb, result.hwm_mb = rss.peak_mb, rss.hwm_mb


@dataclass
class Kill:
    status: str = "not run"
    lines: int = 0
    answered_at_kill: int = 0
    seconds_after_restart: float = 0.0
    once: int = 0  # custom_ids with exactly one line over the output and error files
    missing: int = 0
    duplicated: int = 0
    backend_answers: int = 0


async def _answered(backend: BackendProcess, tag: str) -> int:
    stats = await backend_call(backend, "GET", "/_stats")
    return sum(count for key, count in stats["answered"].items() if key.startswith(f"{tag} "))


async def _file_ids_count(client: AsyncOpenAI, batch: Any) -> dict[str, int]:
    """How many lines each custom_id has over the batch's output and error files."""
    counts: dict[str, int] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            content = (await client.files.content(file_id)).content
            for line in content.splitlines():
                custom_id = str(orjson.loads(line).get("custom_id"))
                counts[custom_id] = counts.get(custom_id, 0) + 1
    return counts


async def kill_mid_batch(
    start_server: Callable[[], Awaitable[LlamaStackServer]], backend: BackendProcess, lines: int, deadline_s: float
) -> Kill:
    """Create a ``lines``-line batch, ``kill -9`` the server once the backend has answered a third of it, start it
    again on the same state, and wait for the batch; then count each custom_id's lines in the output files."""
    result, tag = Kill(lines=lines), "kill"
    server = await start_server()
    try:
        async with client_for(server) as client:
            file_id = await upload(client, input_lines(lines, tag), "kill.jsonl")
            batch = await client.batches.create(
                input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        async with asyncio.timeout(deadline_s):
            while await _answered(backend, tag) < lines // 3:
                await asyncio.sleep(POLL_S)
        result.answered_at_kill = await _answered(backend, tag)
    finally:
        await server.kill()
    server = await start_server()
    try:
        async with client_for(server) as client:
            start = time.monotonic()
            batch = await until_terminal(client, batch.id, start + deadline_s)
            result.seconds_after_restart = time.monotonic() - start
            result.status = batch.status if batch.status in TERMINAL else f"{batch.status} at the deadline"
            counts = await _file_ids_count(client, batch) if batch.status in TERMINAL else {}
    finally:
        await server.stop()
    expected = {f"{tag}-{i}" for i in range(lines)}
    result.once = sum(1 for key in expected if counts.get(key) == 1)
    result.missing = sum(1 for key in expected if key not in counts)
    result.duplicated = sum(1 for count in counts.values() if count > 1)
    result.backend_answers = await _answered(backend, tag)
    return result
