"""Scale-out benchmark: throughput of the ``inline::reference`` engine with 1 and then 2 worker processes on
PostgreSQL, against a fake backend that answers every request in 200 ms (see bench/README.md).

    .venv/bin/python bench/bench_workers.py [--quick] [--batches 4,8] [--postgres postgresql://root@127.0.0.1:5432/test]

The run config is the one of docs/scaling-out.md: the engine's default ``max_concurrent_batches`` (4) and
``poll_interval_s`` (1 s), ``max_concurrent_requests_per_batch: 64``, ``max_concurrent_requests: 256``; the script
prints it. One batch is held by one worker, so a second worker helps only when there are more batches than one
worker runs at once: each scenario (a number of batches) runs with 1 and then 2 workers. Each run has a fresh
PostgreSQL database (created on the server, dropped afterwards), ``inline::localfs`` files in a shared temporary
directory, the fake backend as a subprocess (``python -m tests.fake_backend``) and N ``llama-batches worker``
subprocesses. This process is the API side: it builds the stack with ``execute`` off (as ``serve --no-worker``
does), uploads the inputs, creates the batches and polls them. The time runs from the first create to the last
batch completed.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import getpass
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import asyncpg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import CHAT, BackendProcess, Result, print_table, upload, write_input
from bench._procs import Worker
from llama_batches import Stack, build_stack
from llama_batches.api import Batch
from llama_batches_reference.config import ReferenceBatchesImplConfig

LATENCY_MS = 200
_DEFAULTS = ReferenceBatchesImplConfig.model_fields
BATCHES_PER_WORKER: int = _DEFAULTS["max_concurrent_batches"].default  # the engine's default
POLL_INTERVAL_S: float = _DEFAULTS["poll_interval_s"].default  # the engine's default: how soon a worker sees a batch
WINDOW = 64  # max_concurrent_requests_per_batch, as in docs/scaling-out.md
GLOBAL_CAP = 256  # max_concurrent_requests, as in docs/scaling-out.md
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
POSTGRES_ENV = "LLAMA_BATCHES_TEST_POSTGRES_URL"


def ideal_rps(workers: int, batches: int, requests: int) -> float:
    """Batches run in waves of ``workers x max_concurrent_batches``; a batch of ``requests`` takes
    ``ceil(requests / window)`` rounds of 0.2 s; no poll delay, validation or output file."""
    waves = math.ceil(batches / (workers * BATCHES_PER_WORKER))
    return batches * requests / (waves * math.ceil(requests / WINDOW) * LATENCY_MS / 1000)


def describe_config() -> str:
    return (
        f"max_concurrent_batches {BATCHES_PER_WORKER} (default), poll_interval_s {POLL_INTERVAL_S:g} (default), "
        f"max_concurrent_requests_per_batch {WINDOW}, max_concurrent_requests {GLOBAL_CAP}; backend {LATENCY_MS} ms"
    )


# PostgreSQL ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    """Where a database is, in the fields of a ``sql_postgres`` backend."""

    host: str
    port: int
    user: str
    password: str | None
    db: str

    @classmethod
    def from_url(cls, url: str) -> Postgres:
        parsed = urlparse(url)
        return cls(
            host=parsed.hostname or "127.0.0.1",
            port=parsed.port or 5432,
            user=parsed.username or getpass.getuser(),
            password=parsed.password,
            db=parsed.path.lstrip("/") or "test",
        )

    def backend(self, kind: str) -> dict[str, Any]:
        """The ``storage.backends`` entry of type ``kind`` (``sql_postgres`` or ``kv_postgres``)."""
        fields = {"host": self.host, "port": self.port, "db": self.db, "user": self.user, "password": self.password}
        return {"type": kind, **fields, "pool_size": 10}

    async def execute(self, statement: str) -> None:
        conn = await asyncpg.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, database=self.db, timeout=5
        )
        try:
            await conn.execute(statement)
        finally:
            await conn.close()


@asynccontextmanager
async def fresh_database(server: Postgres) -> AsyncIterator[Postgres]:
    """A new database on ``server`` for the block, dropped afterwards."""
    name = f"llama_batches_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await server.execute(f'CREATE DATABASE "{name}"')
    try:
        yield replace(server, db=name)
    finally:
        await server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# the cluster ---------------------------------------------------------------------------------------------------


def cluster_config(shared: Path, base_url: str, db: Postgres) -> dict[str, Any]:
    """The run config every process uses (the one of docs/scaling-out.md, with the bench's sizes)."""
    engine = {
        "kvstore": {"backend": "kv_default", "namespace": "batches"},
        "max_concurrent_requests_per_batch": WINDOW,
        "max_concurrent_requests": GLOBAL_CAP,
    }  # max_concurrent_batches and poll_interval_s: the engine's defaults
    files = {"storage_dir": str(shared / "files"), "metadata_store": {"backend": "sql_default", "table_name": "files"}}
    inference = {"base_url": base_url, "api_key": "test"}
    return {
        "version": 2,
        "apis": ["batches", "files", "inference"],
        "providers": {
            "batches": [{"provider_id": "reference", "provider_type": "inline::reference", "config": engine}],
            "files": [{"provider_id": "localfs", "provider_type": "inline::localfs", "config": files}],
            "inference": [{"provider_id": "backend", "provider_type": "remote::openai", "config": inference}],
        },
        "storage": {"backends": {"kv_default": db.backend("kv_postgres"), "sql_default": db.backend("sql_postgres")}},
        "registered_resources": {"models": []},
    }


def api_only(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with execution off: what ``serve --no-worker`` runs."""
    front = copy.deepcopy(config)
    front["providers"]["batches"][0]["config"]["execute"] = False
    return front


async def start_workers(shared: Path, config_path: Path, count: int) -> list[Worker]:
    workers = [Worker(config_path, shared / f"worker{i}.log") for i in range(count)]
    await asyncio.gather(*(worker.start() for worker in workers))
    return workers


async def upload_inputs(stack: Stack, shared: Path, batches: int, requests: int) -> list[str]:
    """One input file per batch, written to disk and uploaded; request ids are unique over all batches."""
    file_ids = []
    for b in range(batches):
        path = shared / f"input{b}.jsonl"
        write_input(path, requests, start=b * requests)
        file_ids.append(await upload(stack, path))
    return file_ids


async def wait_all(stack: Stack, batch_ids: list[str], poll_s: float = 0.05) -> list[Batch]:
    """Poll until every batch is terminal."""
    while True:
        batches = [await stack.batches.retrieve_batch(batch_id) for batch_id in batch_ids]
        if all(b.status in TERMINAL for b in batches):
            return batches
        await asyncio.sleep(poll_s)


async def reset_backend(backend: BackendProcess) -> None:
    async with aiohttp.ClientSession() as session, session.post(backend.base_url.removesuffix("/v1") + "/_reset") as r:
        r.raise_for_status()


# one run -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one run measured."""

    workers: int
    batches: int
    requests: int  # per batch
    seconds: float
    completed: int
    per_worker: list[int]  # batches each worker started
    once: bool  # the backend saw every request exactly once

    @property
    def total(self) -> int:
        return self.batches * self.requests

    @property
    def rps(self) -> float:
        return self.total / self.seconds

    @property
    def ideal(self) -> float:
        return ideal_rps(self.workers, self.batches, self.requests)


async def timed_batches(stack: Stack, file_ids: list[str]) -> tuple[list[Batch], float]:
    """Create a batch per file; the seconds from the first create to the last batch terminal."""
    start = time.perf_counter()
    batch_ids = [(await stack.batches.create_batch(file_id, CHAT, "24h")).id for file_id in file_ids]
    done = await wait_all(stack, batch_ids)
    return done, time.perf_counter() - start


async def run_cluster(server: Postgres, backend: BackendProcess, workers: int, batches: int, requests: int) -> Run:
    """``batches`` batches of ``requests`` requests over ``workers`` worker processes, on a fresh database."""
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        shared = Path(tmp)
        async with fresh_database(server) as db:
            config = cluster_config(shared, backend.base_url, db)
            config_path = shared / "run.yaml"
            config_path.write_text(yaml.safe_dump(config))
            async with build_stack(api_only(config)) as stack:
                file_ids = await upload_inputs(stack, shared, batches, requests)
                procs = await start_workers(shared, config_path, workers)
                try:
                    await reset_backend(backend)
                    done, seconds = await timed_batches(stack, file_ids)
                finally:
                    await asyncio.gather(*(proc.stop() for proc in procs))
            stats = await backend.stats()
            per_worker = [len(proc.batches_run()) for proc in procs]
    seen: dict[str, int] = stats["seen"]
    once = len(seen) == batches * requests and all(count == 1 for count in seen.values())
    counts = [b.request_counts for b in done if b.status == "completed"]
    completed = sum(c.completed for c in counts if c is not None)
    return Run(workers, batches, requests, seconds, completed, per_worker, once)


def report(run: Run) -> None:
    print(
        f"  {run.total} requests in {run.seconds:.2f} s: {run.rps:.0f} req/s ({run.rps / run.ideal:.1%} of ideal "
        f"{run.ideal:.0f}); completed {run.completed}/{run.total}; batches started per worker: "
        f"{' + '.join(str(n) for n in run.per_worker)}; backend saw each request once: {'yes' if run.once else 'NO'}"
    )


# results -------------------------------------------------------------------------------------------------------


def _label(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def results(pairs: list[tuple[Run, Run]]) -> list[Result]:
    """Per scenario: each run's req/s against its ideal and the ratio (for reference); every request completed and
    seen once by the backend (judged)."""
    rows = []
    for one, two in pairs:
        scenario = f"{one.batches} batches"
        for run in (one, two):
            value = f"{run.rps:.0f} ({run.rps / run.ideal:.1%})"
            rows.append(Result(scenario, f"{_label(run.workers)}: req/s (ideal {run.ideal:.0f})", "-", value, None))
        ideal = two.ideal / one.ideal
        rows.append(Result(scenario, "ratio 2 workers / 1", f"ideal {ideal:.2f}x", f"{two.rps / one.rps:.2f}x", None))
        spread = " + ".join(str(n) for n in two.per_worker)
        rows.append(Result(scenario, "batches per worker (2 workers)", "-", spread, None))
    runs = [run for pair in pairs for run in pair]
    complete = all(run.once and run.completed == run.total for run in runs)
    value = f"{sum(r.completed for r in runs)} / {sum(r.total for r in runs)}"
    rows.append(Result("all runs", "requests completed, each once", "all, once", value, complete))
    return rows


async def _scenario(server: Postgres, backend: BackendProcess, batches: int, requests: int) -> tuple[Run, Run]:
    runs: list[Run] = []
    for workers in (1, 2):
        ideal = ideal_rps(workers, batches, requests)
        print(f"\n[{batches} batches x {requests} chat requests, {_label(workers)}] (ideal {ideal:.0f} req/s)")
        runs.append(await run_cluster(server, backend, workers, batches, requests))
        report(runs[-1])
    one, two = runs
    print(f"  ratio 2 workers / 1 worker: {two.rps / one.rps:.2f}x (ideal {two.ideal / one.ideal:.2f}x)")
    return one, two


async def _main(args: argparse.Namespace) -> int:
    requests = 250 if args.quick else 1000
    server = Postgres.from_url(args.postgres)
    try:
        await server.execute("SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: no PostgreSQL server at {server.host}:{server.port} ({exc}); pass --postgres URL")
        return 2
    print(f"config of every worker: {describe_config()}")
    async with BackendProcess(latency_ms=LATENCY_MS) as backend:
        pairs = [await _scenario(server, backend, batches, requests) for batches in args.batches]
    table = results(pairs)
    print_table(table)
    return 0 if all(r.ok is not False for r in table) else 1


def main(argv: list[str] | None = None) -> int:
    """Each scenario with 1 worker, then 2; the exit status is 1 when a request is lost or sent twice, 2 without a
    PostgreSQL server."""
    parser = argparse.ArgumentParser(description="Throughput with 1 vs 2 worker processes on PostgreSQL.")
    parser.add_argument("--quick", action="store_true", help="batches of 250 requests instead of 1,000")
    batches_help = "comma-separated numbers of batches, one scenario each (default 4,8: one worker's capacity, twice)"
    parser.add_argument("--batches", type=lambda v: [int(n) for n in v.split(",")], default=[4, 8], help=batches_help)
    default_url = os.environ.get(POSTGRES_ENV) or f"postgresql://{getpass.getuser()}@127.0.0.1:5432/test"
    url_help = f"server URL (default: ${POSTGRES_ENV}, else {default_url})"
    parser.add_argument("--postgres", default=default_url, help=url_help)
    args = parser.parse_args(argv)
    print(f"llama-batches scale-out benchmark ({'quick' if args.quick else 'full'}), {sys.version.split()[0]}")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
