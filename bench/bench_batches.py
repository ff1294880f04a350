"""Benchmark of the ``inline::reference`` batches engine against its stated goals (see bench/README.md).

    .venv/bin/python bench/bench_batches.py [--only throughput,latency,memory,race] [--quick]

Every scenario drives the engine through the library (``build_stack``) against the fake OpenAI-compatible backend
running as a subprocess, and prints its figures; a results table with PASS/MISS closes the run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    CHAT,
    MB,
    ROOT,
    BackendProcess,
    Result,
    RssSampler,
    chat_body,
    print_table,
    run_batch,
    run_workers,
    stack_config,
    upload,
    write_input,
)
from llama_batches import Stack, build_stack

SCENARIOS = ("throughput", "latency", "memory", "race")
WARMUP = 50
REPEATS = 3  # throughput figures are the best of this many runs (the ceiling is noisy on a 2-core machine)
CONTENT_BYTES = 4096
MEMORY_RUNS = 3  # memory figures are the median of this many fresh child processes (RSS is noisy)
RESULT_MARK = "RESULT "
SCRIPT = Path(__file__).resolve()


@dataclass(frozen=True)
class Sizes:
    """How many requests each scenario runs."""

    throughput: int
    latency: int
    memory: tuple[int, int]
    race_lines: int


FULL = Sizes(throughput=2000, latency=5000, memory=(5000, 20000), race_lines=200)
QUICK = Sizes(throughput=500, latency=1280, memory=(500, 2000), race_lines=200)


# 1. throughput -------------------------------------------------------------------------------------------------


async def aiohttp_rps(base_url: str, n: int, concurrency: int, repeats: int) -> list[float]:
    """The ceiling: a bare aiohttp client posting the chat bodies with ``concurrency`` workers (req/s per run)."""
    bodies = [orjson.dumps(chat_body(i)) for i in range(n)]
    headers = {"content-type": "application/json", "authorization": "Bearer test"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def post(body: bytes) -> None:
            async with session.post(base_url + "/chat/completions", data=body) as response:
                await response.read()
                response.raise_for_status()

        await run_workers(bodies[:WARMUP], post, concurrency)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            await run_workers(bodies, post, concurrency)
            runs.append(n / (time.perf_counter() - start))
        return runs


async def sdk_rps(base_url: str, n: int, concurrency: int, repeats: int) -> list[float]:
    """The openai SDK (``chat.completions.create``) with ``concurrency`` workers (req/s per run)."""
    client = AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)

    async def create(i: int) -> None:
        await client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": f"hello {i}"}])

    try:
        await run_workers(range(WARMUP), create, concurrency)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            await run_workers(range(n), create, concurrency)
            runs.append(n / (time.perf_counter() - start))
        return runs
    finally:
        await client.close()


async def batch_rps(directory: Path, base_url: str, n: int, per_batch: int, repeats: int) -> list[float]:
    """``n``-request batches through the stack, one after the other (after a small warm-up batch): req/s per
    batch, from create_batch to status completed."""
    runs = []
    async with build_stack(stack_config(directory, base_url, per_batch=per_batch)) as stack:
        write_input(directory / "warmup.jsonl", WARMUP, start=10**7)
        await run_batch(stack, await upload(stack, directory / "warmup.jsonl"))
        write_input(directory / "input.jsonl", n)
        file_id = await upload(stack, directory / "input.jsonl")
        for _ in range(repeats):
            batch, elapsed = await run_batch(stack, file_id)
            counts = batch.request_counts
            if batch.status != "completed" or counts is None or counts.completed != n:
                raise RuntimeError(f"batch ended {batch.status} with {counts}; errors: {batch.errors}")
            runs.append(n / elapsed)
    return runs


def _best(label: str, runs: list[float], suffix: str = "") -> float:
    best = max(runs)
    listed = " ".join(f"{run:.0f}" for run in runs)
    print(f"  {label:<21}: {best:8.0f} req/s  {suffix}(runs: {listed})")
    return best


async def bench_throughput(n: int) -> list[Result]:
    print(f"\n[throughput] {n} chat requests, backend 0 ms, concurrency 10, best of {REPEATS} runs")
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as tmp:
        async with BackendProcess(latency_ms=0) as backend:
            direct_runs = await aiohttp_rps(backend.base_url, n, 10, REPEATS)
            sdk_runs = await sdk_rps(backend.base_url, n, 10, REPEATS)
            batch_runs = await batch_rps(Path(tmp), backend.base_url, n, 10, REPEATS)
    direct = _best("direct aiohttp client", direct_runs)
    sdk = _best("openai SDK", sdk_runs, f"{max(sdk_runs) / direct:.1%} of direct ")
    batch = max(batch_runs)
    _best("batch (reference)", batch_runs, f"{batch / direct:.1%} of direct, {batch / sdk:.0%} of SDK ")
    ok = batch >= 0.5 * direct
    return [
        Result("throughput", "direct aiohttp req/s", "ceiling", f"{direct:.0f}", None),
        Result("throughput", "openai SDK req/s (ratio)", "reference", f"{sdk:.0f} ({sdk / direct:.1%})", None),
        Result("throughput", "batch req/s (ratio)", ">= 50% of direct", f"{batch:.0f} ({batch / direct:.1%})", ok),
    ]


# 2. latency-bound ----------------------------------------------------------------------------------------------


async def bench_latency(n: int, repeats: int = 2) -> list[Result]:
    ideal = 256 / 0.2
    print(f"\n[latency] {n} requests, backend 200 ms, concurrency 256 (ideal {ideal:.0f} req/s), best of {repeats}")
    with tempfile.TemporaryDirectory(prefix="bench-lat-") as tmp:
        async with BackendProcess(latency_ms=200) as backend:
            runs = await batch_rps(Path(tmp), backend.base_url, n, 256, repeats)
    rps = _best("batch (reference)", runs, f"{max(runs) / ideal:.1%} of ideal ")
    value = f"{rps:.0f} ({rps / ideal:.1%})"
    return [Result("latency", "batch req/s (of 1280 ideal)", ">= 85%", value, rps >= 0.85 * ideal)]


# 3. memory (each size in a fresh child process, so one run's freed arenas do not hide the next one's growth) --


async def memory_child(n: int) -> dict[str, float]:
    """Run one ``n``-line, ~4 KB-per-line batch; RSS growth is measured from just before create_batch."""
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        directory = Path(tmp)
        async with (
            BackendProcess(latency_ms=0) as backend,
            build_stack(stack_config(directory, backend.base_url, per_batch=64)) as stack,
        ):
            size = write_input(directory / "input.jsonl", n, CONTENT_BYTES)
            file_id = await upload(stack, directory / "input.jsonl")
            gc.collect()
            async with RssSampler() as rss:
                batch, elapsed = await run_batch(stack, file_id)
            lines, out_bytes = await _count_output(stack, batch.output_file_id)
    counts = batch.request_counts
    return {
        "n": n,
        "completed": counts.completed if counts is not None and batch.status == "completed" else -1,
        "output_lines": lines,
        "input_mb": size / MB,
        "output_mb": out_bytes / MB,
        "baseline_mb": rss.baseline / MB,
        "peak_mb": rss.peak / MB,
        "growth_mb": rss.growth / MB,
        "seconds": elapsed,
    }


async def _count_output(stack: Stack, file_id: str | None) -> tuple[int, int]:
    """Lines and bytes of the output file, streamed (not held)."""
    if file_id is None:
        return 0, 0
    lines = size = 0
    async for chunk in await stack.files.openai_retrieve_file_content(file_id):
        lines += chunk.count(b"\n")
        size += len(chunk)
    return lines, size


async def _run_memory_child(n: int) -> dict[str, float]:
    script = str(SCRIPT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        script,
        "--memory-child",
        str(n),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith(RESULT_MARK):
            result: dict[str, float] = orjson.loads(line.removeprefix(RESULT_MARK))
            return result
    raise RuntimeError(f"the memory child for {n} lines exited {proc.returncode} without a result")


async def _memory_size(n: int, runs: int) -> tuple[float, bool]:
    """``runs`` fresh children for ``n`` lines; returns the median growth and whether every run completed."""
    growths: list[float] = []
    all_done = True
    for _ in range(runs):
        m = await _run_memory_child(n)
        done = m["completed"] == n and m["output_lines"] == n
        all_done = all_done and done
        growths.append(m["growth_mb"])
        print(
            f"  {n:6d} lines: input {m['input_mb']:.0f} MB, output {m['output_mb']:.0f} MB, {m['seconds']:.1f} s "
            f"({n / m['seconds']:.0f} req/s); RSS {m['baseline_mb']:.0f} -> peak {m['peak_mb']:.0f} MB, "
            f"growth {m['growth_mb']:.1f} MB; completed {int(m['completed'])}, output lines {int(m['output_lines'])}"
        )
    return statistics.median(growths), all_done


async def bench_memory(sizes: tuple[int, int], runs: int = MEMORY_RUNS) -> list[Result]:
    print(f"\n[memory] {sizes[0]} and {sizes[1]} lines x ~4 KB, backend 0 ms, concurrency 64, median of {runs} runs")
    results: list[Result] = []
    medians: list[float] = []
    for n in sizes:
        growth, done = await _memory_size(n, runs)
        medians.append(growth)
        value = f"{growth:.1f} MB" + ("" if done else " (NOT COMPLETED)")
        results.append(
            Result("memory", f"RSS growth, {n} lines", "<= 100 MB, completes", value, done and growth <= 100)
        )
    delta = medians[1] - medians[0]
    print(
        f"  median growth: {medians[0]:.1f} MB ({sizes[0]}), {medians[1]:.1f} MB ({sizes[1]}); "
        f"difference {delta:+.1f} MB (flat: <= 20 MB for 4x the data)"
    )
    metric = f"growth {sizes[1]} - {sizes[0]}"
    results.append(Result("memory", metric, "flat (<= 20 MB)", f"{delta:+.1f} MB", delta <= 20))
    return results


# 4. idempotency race -------------------------------------------------------------------------------------------


async def bench_race(lines: int, creates: int = 64) -> list[Result]:
    print(f"\n[race] {creates} concurrent create_batch with one idempotency key, {lines}-line file")
    with tempfile.TemporaryDirectory(prefix="bench-race-") as tmp:
        directory = Path(tmp)
        async with BackendProcess(latency_ms=0) as backend:
            async with build_stack(stack_config(directory, backend.base_url, per_batch=64)) as stack:
                write_input(directory / "input.jsonl", lines)
                file_id = await upload(stack, directory / "input.jsonl")
                create = stack.batches.create_batch
                calls = [create(file_id, CHAT, "24h", idempotency_key="race") for _ in range(creates)]
                batches = await asyncio.gather(*calls)
                ids = {b.id for b in batches}
                final, _ = await run_batch(stack, file_id, key="race")
                listed = len((await stack.batches.list_batches(limit=100)).data)
            stats = await backend.stats()
    seen: dict[str, int] = stats["seen"]
    posts = stats["requests"].get(CHAT, 0)
    once = len(seen) == lines and all(count == 1 for count in seen.values()) and posts == lines
    ok = len(ids) == 1 and listed == 1 and final.status == "completed" and once
    print(f"  distinct batch ids: {len(ids)}; batches listed: {listed}; final status: {final.status}")
    most = max(seen.values(), default=0)
    print(f"  backend: {posts} POSTs for {lines} requests; distinct requests {len(seen)}, max per request {most}")
    value = f"{len(ids)} batch, {'1 execution' if once else f'{posts} POSTs / {lines}'}"
    return [Result("race", f"{creates} creates, one key", "1 batch, 1 execution", value, ok)]


# CLI -----------------------------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the inline::reference batches engine.")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a quick run")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


async def _main(args: argparse.Namespace) -> int:
    sizes = QUICK if args.quick else FULL
    results: list[Result] = []
    for name in SCENARIOS:
        if name not in args.only:
            continue
        if name == "throughput":
            results += await bench_throughput(sizes.throughput)
        elif name == "latency":
            results += await bench_latency(sizes.latency)
        elif name == "memory":
            results += await bench_memory(sizes.memory)
        else:
            results += await bench_race(sizes.race_lines)
    print_table(results)
    return 0 if all(r.ok is not False for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios; the exit status is 1 when a goal is missed."""
    args = _parse_args(argv)
    if args.memory_child is not None:
        result = asyncio.run(memory_child(args.memory_child))
        print(RESULT_MARK + orjson.dumps(result).decode(), flush=True)
        return 0
    print(f"llama-batches benchmark ({'quick' if args.quick else 'full'}), {sys.version.split()[0]}")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
