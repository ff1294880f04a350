"""llama-batches inside llama-stack 0.7.3, side by side with llama-stack's own ``inline::reference`` batches provider.

    .venv/bin/python bench/bench_llama_stack.py [--parts throughput,race,latency,memory,kill] [--lines 2000] ...

The same run config (``examples/llama-stack/run.yaml``: llama-stack's ``inline::localfs`` files, its
``remote::openai`` inference on the fake backend) is served by ``llama stack run`` once per batches provider and
part, each provider with a fresh state directory and the fake backend as a subprocess (``python -m
tests.fake_backend``, run from the repository root). Both providers get the same ``max_concurrent_batches`` and
``max_concurrent_requests_per_batch``. The parts: throughput of one batch with the server's CPU and RSS, 64 racing
creates with one idempotency key, a latency-bound batch (200 ms backend, window 32), an 80 MB input file (the
server's RSS), and ``kill -9`` of the server mid-batch. A side-by-side table with PASS/FAIL closes the run; the exit
status is 1 when a goal is missed (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import yaml
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import CHAT, ROOT, BackendProcess
from bench._procs import LlamaStackServer, llama_stack_bin
from bench._stack_parts import (
    TERMINAL,
    TreeRss,
    backend_call,
    client_for,
    input_lines,
    run_batch,
    until_terminal,
    upload,
    wait_quiet,
)
from bench._stack_report import ProviderRun, Race, Throughput, print_report
from bench._stack_scenarios import kill_mid_batch, latency_bound, memory

EXAMPLE = ROOT / "examples" / "llama-stack" / "run.yaml"
PROVIDERS = ("llama-batches", "reference")
PARTS = ("throughput", "race", "latency", "memory", "kill")
RACE_KEY = "bench-race"
WARMUP_LINES = 20


def write_config(provider: str, directory: Path, batches: int, per_batch: int) -> Path:
    """The example run config with ``provider`` as the batches provider, both with the same concurrency."""
    directory.mkdir(parents=True, exist_ok=True)
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


@contextlib.asynccontextmanager
async def served(
    provider: str, args: argparse.Namespace, directory: Path, latency_ms: float, concurrency: int
) -> AsyncIterator[tuple[BackendProcess, Any]]:
    """A fake backend answering in ``latency_ms`` and a factory of ``llama stack run`` servers on ``directory``'s
    state, with ``provider`` and a window of ``concurrency``: every server started from it shares that state."""
    config = write_config(provider, directory, args.batches, concurrency)
    async with BackendProcess(latency_ms=latency_ms) as backend:
        env = {"OPENAI_BASE_URL": backend.base_url, "INFERENCE_MODEL": "fake-model"}
        env |= {"SQLITE_STORE_DIR": str(directory / "state"), "FILES_STORAGE_DIR": str(directory / "files")}

        async def start() -> LlamaStackServer:
            server = LlamaStackServer(args.bin_dir, config, directory / "llama-stack.log", env)
            await server.start()
            return server

        yield backend, start


async def _throughput_and_race(run: ProviderRun, args: argparse.Namespace, directory: Path) -> None:
    async with served(run.provider, args, directory, args.latency_ms, args.concurrency) as (backend, start):
        server = await start()
        try:
            async with client_for(server) as client:
                if "throughput" in args.parts:
                    run.throughput = await throughput(client, backend, server.pid, args.lines, args.deadline_s)
                if "race" in args.parts:
                    run.race = await race(client, backend, args.race_lines, args.creates, args.deadline_s)
        finally:
            await server.stop()


async def _latency_and_memory(run: ProviderRun, args: argparse.Namespace, directory: Path) -> None:
    if "latency" in args.parts:
        window = args.latency_concurrency
        async with served(run.provider, args, directory / "latency", args.slow_ms, window) as (_, start):
            server = await start()
            try:
                async with client_for(server) as client:
                    ceiling = window / (args.slow_ms / 1000)
                    run.latency = await latency_bound(client, args.latency_lines, ceiling, args.deadline_s)
            finally:
                await server.stop()
    if "memory" in args.parts:
        async with served(run.provider, args, directory / "memory", 0.0, args.concurrency) as (_, start):
            server = await start()
            try:
                async with client_for(server) as client:
                    mb, kb = args.memory_mb, args.memory_line_kb
                    await memory(client, server.pid, mb, kb, args.memory_deadline_s, run.memory)
            finally:
                await server.stop()


async def _part(run: ProviderRun, name: str, part: Any) -> None:
    """Run one part; a failure of the provider is recorded as measured, not raised."""
    try:
        await part
    except Exception as exc:
        run.crash += f"{name}: {type(exc).__name__}: {exc}"[:500] + "; "


async def run_provider(provider: str, args: argparse.Namespace, base: Path) -> ProviderRun:
    """Every selected part with ``provider`` as the batches provider, each on fresh state and a fresh backend."""
    directory = Path(tempfile.mkdtemp(prefix=f"{provider}-", dir=base))
    run = ProviderRun(provider)
    if {"throughput", "race"} & set(args.parts):
        await _part(run, "throughput/race", _throughput_and_race(run, args, directory / "main"))
    await _part(run, "latency/memory", _latency_and_memory(run, args, directory))
    if "kill" in args.parts:
        async with served(provider, args, directory / "kill", args.latency_ms, args.concurrency) as (backend, start):
            killed = kill_mid_batch(start, backend, args.kill_lines, args.kill_deadline_s)
            await _part(run, "kill", _store(run, killed))
    if run.crash:
        print_logs(directory)
    return run


def print_logs(directory: Path) -> None:
    """The tail of every server log under ``directory``."""
    for log in sorted(directory.glob("**/llama-stack.log")):
        print(f"--- {log}\n" + log.read_text(errors="replace")[-3000:])


async def _store(run: ProviderRun, killed: Any) -> None:
    run.kill = await killed


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="llama-batches vs llama-stack's inline::reference, in llama-stack.")
    add = parser.add_argument
    add("--parts", type=lambda v: v.split(","), default=list(PARTS), help=f"comma-separated, of {','.join(PARTS)}")
    add("--lines", type=int, default=2000, help="throughput: chat lines in the batch")
    add("--latency-ms", type=float, default=50.0, help="throughput, race and kill: the fake backend's latency")
    add("--concurrency", type=int, default=10, help="max_concurrent_requests_per_batch, both (all parts but latency)")
    add("--batches", type=int, default=4, help="max_concurrent_batches, both")
    add("--creates", type=int, default=64, help="race: racing creates with one idempotency key")
    add("--race-lines", type=int, default=50, help="race: lines in the batch")
    add("--slow-ms", type=float, default=200.0, help="latency: the fake backend's latency")
    add("--latency-concurrency", type=int, default=32, help="latency: max_concurrent_requests_per_batch, both")
    add("--latency-lines", type=int, default=1000, help="latency: lines in the batch")
    add("--memory-mb", type=float, default=80.0, help="memory: size of the input file")
    add("--memory-line-kb", type=float, default=40.0, help="memory: size of one input line")
    add("--memory-deadline-s", type=float, default=150.0, help="memory: give up on the batch after this long")
    add("--kill-lines", type=int, default=1000, help="kill: lines in the batch")
    add("--kill-deadline-s", type=float, default=60.0, help="kill: wait this long for the batch after the restart")
    add("--deadline-s", type=float, default=120.0, help="give up on a batch after this long")
    add("--reference-first", action="store_true", help="run inline::reference first")
    add("--keep", type=Path, default=None, help="keep state and logs under this directory")
    args = parser.parse_args(argv)
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; the parts are {', '.join(PARTS)}")
    return args


async def _main(args: argparse.Namespace) -> int:
    args.bin_dir, version = llama_stack_bin()
    ceiling = args.concurrency / (args.latency_ms / 1000)
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start)")
    print(
        f"llama-stack {version} ({args.bin_dir}); parts {','.join(args.parts)}; both providers "
        f"max_concurrent_batches={args.batches}, max_concurrent_requests_per_batch={args.concurrency} "
        f"(latency part: {args.latency_concurrency}); throughput: {args.lines} lines, backend {args.latency_ms:g} ms "
        f"(ceiling {ceiling:.0f} req/s); race: {args.creates} creates on {args.race_lines} lines; latency: "
        f"{args.latency_lines} lines, backend {args.slow_ms:g} ms; memory: {args.memory_mb:g} MB of "
        f"{args.memory_line_kb:g} KB lines, backend 0 ms; kill: {args.kill_lines} lines, backend {args.latency_ms:g} ms"
    )
    with contextlib.ExitStack() as stack:
        base = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-llama-stack-")))
        base.mkdir(parents=True, exist_ok=True)
        runs = []
        for provider in reversed(PROVIDERS) if args.reference_first else PROVIDERS:
            start = time.monotonic()
            runs.append(await run_provider(provider, args, base))
            print(f"  {provider}: {time.monotonic() - start:.0f} s in all; load average {os.getloadavg()[0]:.1f}")
    ours, ref = sorted(runs, key=lambda run: PROVIDERS.index(run.provider))
    return 0 if print_report(ours, ref, args) else 1


def main(argv: list[str] | None = None) -> int:
    """Run both providers and print the side-by-side table; the exit status is 1 when a goal is missed."""
    return asyncio.run(_main(_parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
