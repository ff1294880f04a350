"""Shared parts of ``bench_llama_stack.py``: input lines, the server's memory and CPU read from ``/proc``, the fake
backend's counters, and driving a batch through the openai SDK."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from openai import AsyncOpenAI

from bench._harness import CHAT, BackendProcess
from bench._procs import LlamaStackServer

__all__ = [
    "MODEL",
    "POLL_S",
    "TERMINAL",
    "TreeRss",
    "backend_call",
    "client_for",
    "input_lines",
    "run_batch",
    "until_terminal",
    "upload",
    "wait_quiet",
]

MODEL = "openai/fake-model"  # llama-stack 0.7 names a provider's models <provider_id>/<model>
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
POLL_S = 0.05
_TICKS = os.sysconf("SC_CLK_TCK")
CALL_TIMEOUT_S = 60.0  # one API call to a saturated server may not hang a part (the SDK's default is 600 s)
QUIET_S = 3.0  # the race is over when the backend saw no request for this long (and the batch is terminal)


def input_lines(n: int, tag: str, pad_bytes: int = 0) -> bytes:
    """``n`` chat lines whose user message (the backend's request identity) is unique to ``tag`` and the line,
    padded with ``pad_bytes`` more characters (the fake backend echoes the message, so the answer is as large)."""
    pad = " " + "lorem ipsum " * (pad_bytes // 12 + 1) if pad_bytes else ""
    messages = ([{"role": "user", "content": f"{tag} question {i}{pad[:pad_bytes]}"}] for i in range(n))
    bodies = ({"model": MODEL, "messages": message} for message in messages)
    lines = ({"custom_id": f"{tag}-{i}", "method": "POST", "url": CHAT, "body": body} for i, body in enumerate(bodies))
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from ``/proc/<pid>/task/<tid>/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(child) for child in (task / "children").read_text().split()]
    return found


def status_kb(pid: int, name: str) -> int:
    """A ``/proc/<pid>/status`` field in kB (0 when the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, from ``/proc/<pid>/stat`` (0 when the process is gone)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    return 0.0


class TreeRss:
    """While the block runs: the peak of the summed VmRSS of a process tree (sampled every 50 ms), the CPU seconds
    it used; at the end, its processes' VmHWM (lifetime peak)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline_mb = self.peak_mb = self.hwm_mb = self.cpu_s = 0.0
        self.processes = 0
        self._task: asyncio.Task[None] | None = None

    def rss_mb(self) -> float:
        pids = tree(self.pid)
        self.processes = max(self.processes, len(pids))
        return sum(status_kb(pid, "VmRSS") for pid in pids) / 1024

    async def __aenter__(self) -> TreeRss:
        self.baseline_mb = self.peak_mb = self.rss_mb()
        self.cpu_s = -sum(cpu_s(pid) for pid in tree(self.pid))
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.peak_mb = max(self.peak_mb, self.rss_mb())
        self.hwm_mb = sum(status_kb(pid, "VmHWM") for pid in tree(self.pid)) / 1024
        self.cpu_s += sum(cpu_s(pid) for pid in tree(self.pid))

    async def _sample(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            await asyncio.sleep(0.05)


async def backend_call(backend: BackendProcess, method: str, path: str) -> dict[str, Any]:
    """``GET /_stats`` or ``POST /_reset`` on the fake backend."""
    url = backend.base_url.removesuffix("/v1") + path
    async with aiohttp.ClientSession() as session, session.request(method, url) as answer:
        answer.raise_for_status()
        body: dict[str, Any] = orjson.loads(await answer.read())
        return body


async def wait_quiet(backend: BackendProcess, deadline: float) -> dict[str, Any]:
    """The backend's counters once no chat request arrived or was answered for ``QUIET_S`` (or at the deadline);
    ``/_stats`` itself counts in ``total_requests``, so only the chat path and the answers are compared."""
    last = await backend_call(backend, "GET", "/_stats")
    since = time.monotonic()
    while time.monotonic() - since < QUIET_S and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = await backend_call(backend, "GET", "/_stats")
        if (now["requests"].get(CHAT), now["succeeded"]) != (last["requests"].get(CHAT), last["succeeded"]):
            since = time.monotonic()
        last = now
    return last


def client_for(server: LlamaStackServer) -> AsyncOpenAI:
    """The openai SDK on ``server``: no retries, and a call that takes over ``CALL_TIMEOUT_S`` fails the part."""
    return AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=CALL_TIMEOUT_S)


async def upload(client: AsyncOpenAI, content: bytes, name: str) -> str:
    return (await client.files.create(file=(name, io.BytesIO(content)), purpose="batch")).id


async def until_terminal(client: AsyncOpenAI, batch_id: str, deadline: float) -> Any:
    """Poll every ``POLL_S`` until the batch is terminal; returns it, or the last state seen at the deadline."""
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in TERMINAL or time.monotonic() >= deadline:
            return batch
        await asyncio.sleep(POLL_S)


async def run_batch(client: AsyncOpenAI, file_id: str, deadline_s: float) -> tuple[Any, float]:
    start = time.perf_counter()
    batch = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = await until_terminal(client, batch.id, time.monotonic() + deadline_s)
    return batch, time.perf_counter() - start
