"""llama-batches inside llama-stack 0.7.3, side by side with llama-stack's own ``inline::reference`` batches provider.

    .venv/bin/python bench/bench_llama_stack.py [--lines 2000] [--latency-ms 50] [--race-lines 50]

The same run config (``examples/llama-stack/run.yaml``: llama-stack's ``inline::localfs`` files, its
``remote::openai`` inference on the fake backend) is served twice by ``llama stack run``, once per batches provider,
each with a fresh state directory and a fresh fake backend (a subprocess, ``tests/fake_backend.py``). Both
providers get the same ``max_concurrent_batches`` and ``max_concurrent_requests_per_batch``. Per provider:
throughput of one batch, peak RSS of the server during it, then 64 racing creates with one idempotency key.
A side-by-side table with PASS/FAIL closes the run; the exit status is 1 when a goal is missed (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import openai
import orjson
import yaml
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import CHAT, ROOT, BackendProcess
from tests.llama_stack_process import LlamaStackProcess
from tests.llama_stack_venv import LLAMA_STACK_VERSION, llama_stack_venv

EXAMPLE = ROOT / "examples" / "llama-stack" / "run.yaml"
MODEL = "openai/fake-model"  # llama-stack 0.7 names a provider's models <provider_id>/<model>
PROVIDERS = ("llama-batches", "reference")
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
RACE_KEY = "bench-race"
WARMUP_LINES = 20
POLL_S = 0.05
_TICKS = os.sysconf("SC_CLK_TCK")
QUIET_S = 3.0  # the race is over when the backend saw no request for this long (and the batch is terminal)
GOAL = (
    "llama-batches inside llama-stack: throughput >= llama-stack's own inline::reference; "
    "exactly 1 batch and 1 execution from 64 racing creates"
)


def write_config(provider: str, directory: Path, batches: int, per_batch: int) -> Path:
    """The example run config with ``provider`` as the batches provider, both with the same concurrency."""
    config: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    entry: dict[str, Any] = config["providers"]["batches"][0]
    if provider == "reference":
        kvstore = {"backend": "kv_default", "namespace": "batches"}
        entry = {"provider_id": "reference", "provider_type": "inline::reference", "config": {"kvstore": kvstore}}
    entry["config"].update(max_concurrent_batches=batches, max_concurrent_requests_per_batch=per_batch)
    config["providers"]["batches"] = [entry]
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def input_lines(n: int, tag: str) -> bytes:
    """``n`` chat lines whose user message (the backend's request identity) is unique to ``tag`` and the line."""
    messages = ([{"role": "user", "content": f"{tag} question {i}"}] for i in range(n))
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


@dataclass
class Throughput:
    status: str = "not run"
    completed: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    posts: int = 0
    rss: TreeRss | None = None


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


async def throughput(client: AsyncOpenAI, backend: BackendProcess, pid: int, n: int, deadline_s: float) -> Throughput:
    """A warm-up batch, then one ``n``-line batch timed from create to completed, with the server's RSS and CPU."""
    await run_batch(client, await upload(client, input_lines(WARMUP_LINES, "warmup"), "warmup.jsonl"), deadline_s)
    file_id = await upload(client, input_lines(n, "tp"), "throughput.jsonl")
    await backend_call(backend, "POST", "/_reset")
    async with TreeRss(pid) as rss:
        batch, elapsed = await run_batch(client, file_id, deadline_s)
    stats = await backend_call(backend, "GET", "/_stats")
    counts = batch.request_counts
    result = Throughput(batch.status, counts.completed if counts is not None else 0, elapsed, 0.0, 0, rss)
    result.posts = stats["requests"].get(CHAT, 0)
    if batch.status == "completed" and result.completed == n:
        result.rps = n / elapsed
    elif batch.status not in TERMINAL:
        result.status += f" at the {deadline_s:.0f} s deadline"
    else:
        result.status += f" ({batch.errors})"
    return result


@dataclass
class Race:
    ids: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)
    lines: int = 0
    answers: int = 0
    max_per_request: int = 0
    statuses: list[str] = field(default_factory=list)

    @property
    def executions(self) -> float:
        return self.answers / self.lines if self.lines else 0.0


async def race(client: AsyncOpenAI, backend: BackendProcess, lines: int, creates: int, deadline_s: float) -> Race:
    """``creates`` concurrent creates with one key and the same parameters; the backend's count of executions."""
    file_id = await upload(client, input_lines(lines, "race"), "race.jsonl")
    await backend_call(backend, "POST", "/_reset")
    params: dict[str, Any] = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
    # open `creates` keep-alive connections first, so the creates race each other and not TCP handshakes
    await asyncio.gather(*(client.batches.list(limit=1) for _ in range(creates)))
    calls = (client.batches.create(**params, extra_body={"idempotency_key": RACE_KEY}) for _ in range(creates))
    answers = await asyncio.gather(*calls, return_exceptions=True)
    result = Race(lines=lines)
    ids = {answer.id for answer in answers if not isinstance(answer, BaseException)}
    result.ids = len(ids)
    for answer in answers:
        if isinstance(answer, BaseException):
            label = str(answer.status_code) if isinstance(answer, openai.APIStatusError) else type(answer).__name__
            result.errors[label] = result.errors.get(label, 0) + 1
            result.first_error.setdefault(label, str(answer)[:300])
    deadline = time.monotonic() + deadline_s
    for batch_id in sorted(ids):
        await until_terminal(client, batch_id, deadline)
    stats = await wait_quiet(backend, deadline)
    result.statuses = [(await client.batches.retrieve(batch_id)).status for batch_id in sorted(ids)]
    answered = {key: count for key, count in stats["answered"].items() if key.startswith("race ")}
    result.answers = sum(answered.values())
    result.max_per_request = max(answered.values(), default=0)
    return result


@dataclass
class ProviderRun:
    provider: str
    throughput: Throughput = field(default_factory=Throughput)
    race: Race = field(default_factory=Race)
    crash: str = ""


async def run_provider(provider: str, args: argparse.Namespace, bin_dir: Path, base: Path) -> ProviderRun:
    """One ``llama stack run`` with ``provider`` as the batches provider, in a fresh directory, on a fresh backend."""
    directory = Path(tempfile.mkdtemp(prefix=f"{provider}-", dir=base))
    config = write_config(provider, directory, args.batches, args.concurrency)
    run = ProviderRun(provider)
    async with BackendProcess(latency_ms=args.latency_ms) as backend:
        env = {"OPENAI_BASE_URL": backend.base_url, "INFERENCE_MODEL": "fake-model"}
        env |= {"SQLITE_STORE_DIR": str(directory / "state"), "FILES_STORAGE_DIR": str(directory / "files")}
        server = LlamaStackProcess(bin_dir, config, directory / "llama-stack.log", env)
        async with server, AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0) as client:
            assert server.process is not None
            try:
                run.throughput = await throughput(client, backend, server.process.pid, args.lines, args.deadline_s)
                run.race = await race(client, backend, args.race_lines, args.creates, args.deadline_s)
            except Exception as exc:  # a crash of the provider is a measured result, not the end of the bench
                run.crash = f"{type(exc).__name__}: {exc}"[:500]
            if server.process.returncode is not None:
                run.crash += f" (server exited {server.process.returncode})"
    if run.crash:
        print((directory / "llama-stack.log").read_text(errors="replace")[-3000:])
    return run


SERVER_FIGURES = ("server CPU (% of wall)", "server processes", "server RSS before", "server peak RSS", "server VmHWM")
RACE_FIGURES = ("race: batch ids", "race: errors", "race: answers / lines", "race: max answers/request", "race: status")


def _server_cells(run: Throughput) -> list[str]:
    rss = run.rss
    if rss is None or not run.seconds:
        return ["-"] * len(SERVER_FIGURES)
    mb = "{:.0f} MB".format
    cpu = f"{rss.cpu_s:.1f} s ({rss.cpu_s / run.seconds:.0%})"
    return [cpu, str(rss.processes), mb(rss.baseline_mb), mb(rss.peak_mb), mb(rss.hwm_mb)]


def _race_cells(race: Race) -> list[str]:
    errors = ", ".join(f"{count} x {label}" for label, count in sorted(race.errors.items())) or "none"
    executions = f"{race.answers} / {race.lines} = {race.executions:.1f}"
    return [str(race.ids), errors, executions, str(race.max_per_request), ", ".join(race.statuses) or "-"]


def _rows(ours: ProviderRun, ref: ProviderRun, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """(figure, llama-batches, reference, result) rows; PASS/FAIL only on the goal's figures."""
    a, b, race = ours.throughput, ref.throughput, ours.race
    ratio = a.rps / b.rps if b.rps else float("inf") if a.rps else 0.0
    verdict = {
        "ratio llama-batches / reference": a.rps > 0 and a.rps >= b.rps,
        RACE_FIGURES[0]: race.ids == 1 and not race.errors and not ours.crash,
        RACE_FIGURES[2]: race.lines > 0 and race.answers == race.lines and race.max_per_request == 1,
    }
    cells = [
        ("throughput: batch status / completed", f"{a.status} / {a.completed}", f"{b.status} / {b.completed}"),
        ("backend POSTs for the batch", str(a.posts), str(b.posts)),
        ("wall time create -> completed", f"{a.seconds:.2f} s", f"{b.seconds:.2f} s"),
        ("requests/s", f"{a.rps:.1f}", f"{b.rps:.1f}"),
        ("ratio llama-batches / reference", f"{ratio:.2f}x", ""),
        ("ceiling concurrency / latency", f"{args.concurrency / (args.latency_ms / 1000):.0f} req/s", ""),
        *zip(SERVER_FIGURES, _server_cells(a), _server_cells(b), strict=True),
        *zip(RACE_FIGURES, _race_cells(race), _race_cells(ref.race), strict=True),
    ]
    result = {True: "PASS", False: "FAIL"}
    return [(name, x, y, result[verdict[name]] if name in verdict else "-") for name, x, y in cells]


def print_report(ours: ProviderRun, ref: ProviderRun, args: argparse.Namespace) -> bool:
    rows = _rows(ours, ref, args)
    header = ("figure", "llama-batches", "llama-stack inline::reference", "result")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    rule = "-+-".join("-" * width for width in widths)
    print("\n" + rule)
    for index, row in enumerate([header, *rows]):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print(rule)
    print(rule)
    for run in (ours, ref):
        for label, message in run.race.first_error.items():
            print(f"  {run.provider} race error {label}: {message}")
        if run.crash:
            print(f"  {run.provider} CRASHED: {run.crash}")
    ok = all(row[3] != "FAIL" for row in rows)
    print(f"\n{'PASS' if ok else 'FAIL'}: {GOAL}")
    return ok


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="llama-batches vs llama-stack's inline::reference, in llama-stack.")
    parser.add_argument("--lines", type=int, default=2000, help="chat lines in the throughput batch")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the fake backend's latency per request")
    parser.add_argument("--concurrency", type=int, default=10, help="max_concurrent_requests_per_batch, both")
    parser.add_argument("--batches", type=int, default=4, help="max_concurrent_batches, both")
    parser.add_argument("--creates", type=int, default=64, help="racing creates with one idempotency key")
    parser.add_argument("--race-lines", type=int, default=50, help="lines in the race's batch")
    parser.add_argument("--deadline-s", type=float, default=120.0, help="give up on a batch after this long")
    parser.add_argument("--reference-first", action="store_true", help="run inline::reference first")
    parser.add_argument("--keep", type=Path, default=None, help="keep state and logs under this directory")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    bin_dir = llama_stack_venv()
    ceiling = args.concurrency / (args.latency_ms / 1000)
    print(f"GOAL: {GOAL}\n(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start)")
    print(
        f"llama-stack {LLAMA_STACK_VERSION} ({bin_dir}); {args.lines} chat lines, backend {args.latency_ms:g} ms, "
        f"both providers max_concurrent_batches={args.batches}, max_concurrent_requests_per_batch="
        f"{args.concurrency} (ceiling {ceiling:.0f} req/s); race: {args.creates} creates on {args.race_lines} lines"
    )
    with contextlib.ExitStack() as stack:
        base = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-llama-stack-")))
        base.mkdir(parents=True, exist_ok=True)
        runs = []
        for provider in reversed(PROVIDERS) if args.reference_first else PROVIDERS:
            start = time.monotonic()
            runs.append(await run_provider(provider, args, bin_dir, base))
            print(f"  {provider}: {time.monotonic() - start:.0f} s in all; load average {os.getloadavg()[0]:.1f}")
    ours, ref = sorted(runs, key=lambda run: PROVIDERS.index(run.provider))
    return 0 if print_report(ours, ref, args) else 1


def main(argv: list[str] | None = None) -> int:
    """Run both providers and print the side-by-side table; the exit status is 1 when a goal is missed."""
    return asyncio.run(_main(_parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
