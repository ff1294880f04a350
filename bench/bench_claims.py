"""Claims benchmark: what it costs a worker to claim batches on PostgreSQL when 10,000 batches are active, with
``Leases.claim`` (one ``SELECT ... FOR UPDATE SKIP LOCKED`` then one upsert, in one transaction) and with the
pre-change algorithm (``list_tagged`` of up to 1,000 active batches, then one ``INSERT ... ON CONFLICT DO UPDATE``
per batch until ``limit`` are won), compared on the same run (issue 10 item 5; see bench/README.md).

    .venv/bin/python bench/bench_claims.py [--quick] [--postgres postgresql://root@127.0.0.1:5432/test]

One fresh database (created on the server, dropped afterwards) holds the engine's real ``batches`` table
(``PostgresDatabase.table("batches", BatchRecord)``) with N ``in_progress`` batch records of 50 owners, and its
``leases`` table. Before every run the leases are reset to a layout: ``held`` (all but 100 batches, the oldest, leased
to 50 other live holders for an hour: the running batches are the oldest, since claims go oldest first) or ``free``
(no leases). Then K claimers (each its own ``PostgresDatabase`` and pool, like separate worker processes; here
asyncio tasks in this one process) claim with ``limit=4`` until a claim finds nothing; their leases last an hour
too, as nothing renews them here and none may expire during a run. Figures: per-claim latency
(median, p95, every claim of every claimer), rows claimed per second of wall time, whether every claimed batch was
claimed once and every free batch was claimed. Last, with every batch held by others, the cost of one idle poll (what
``Scheduler.claim`` runs every ``poll_interval_s``: the cancelling claim, limit 100, then the runnable one, limit 4),
and how many batch rows its candidate query reads (``EXPLAIN ANALYZE``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import Result, print_table, run_workers
from bench.bench_workers import POSTGRES_ENV, Postgres, fresh_database
from llama_batches.api import Batch, BatchRequestCounts, BatchStatus
from llama_batches.storage import Leases, Table
from llama_batches.storage.config import PostgresBackendConfig
from llama_batches.storage.postgres import PostgresDatabase
from llama_batches.storage.postgres_leases import _LEASE_CANDIDATES
from llama_batches_reference.records import ACTIVE_STATUSES, BatchRecord

LIMIT = 4  # max_concurrent_batches: how many batches one claim asks for
FREE = 100  # batches nobody holds in the "held" layout
OWNERS, OTHER_HOLDERS = 50, 50  # principals owning the batches; live workers holding them
LEASE_S = 3600.0  # every lease, held or claimed, outlives the run (nobody renews one here)
GOAL_IDLE_MS = 10.0  # 1% of the default poll_interval_s of 1 s, per worker
OLD_WINDOW = 1000  # the pre-change scheduler's list_tagged limit
# what Scheduler.claim asks for (providers/llama_batches_reference/scheduler.py)
RUNNABLE = sorted(s.value for s in (BatchStatus.validating, BatchStatus.in_progress, BatchStatus.finalizing))
CANCELLING = [BatchStatus.cancelling.value]
CANCELLING_PER_CLAIM = 100
ACTIVE_TAGS = [s.value for s in ACTIVE_STATUSES]
# The PRE-CHANGE acquire (git show HEAD:llama_batches/storage/postgres.py), one statement per batch, kept here only
# to compare: a live lease of another holder is left alone, an expired one (or our own) is taken.
OLD_ACQUIRE = (
    "INSERT INTO leases (key, holder, expires_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE "
    "SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at "
    "WHERE leases.expires_at <= $4 OR leases.holder = $2"
)


# the data ------------------------------------------------------------------------------------------------------


def batch_record(i: int, now: int) -> BatchRecord:
    """Batch ``i`` of the run, in progress, as the engine stores it (created a second after batch ``i - 1``)."""
    batch_id = f"batch_{i:08d}{os.urandom(12).hex()}"
    created = now - 86_400 + i
    batch = Batch(
        id=batch_id,
        object="batch",
        endpoint="/v1/chat/completions",
        input_file_id=f"file-{os.urandom(12).hex()}",
        completion_window="24h",
        status=BatchStatus.in_progress.value,
        created_at=created,
        in_progress_at=created + 2,
        expires_at=created + 86_400,
        metadata={"job": f"nightly-{i % 97}", "team": f"team-{i % 7}"},
        request_counts=BatchRequestCounts(total=1000, completed=i % 1000, failed=i % 3),
    )
    return BatchRecord(id=batch_id, created_at=created, batch=batch, idempotency_key=f"key-{i}", fingerprint="f" * 64)


async def populate(table: Table[BatchRecord], count: int) -> list[str]:
    """Insert ``count`` active batches (8 inserts in flight); their ids, oldest first."""
    now = int(time.time())
    records = [(f"user-{i % OWNERS}", batch_record(i, now)) for i in range(count)]

    async def insert(item: tuple[str, BatchRecord]) -> None:
        assert await table.insert(item[0], item[1], tag=item[1].status.value)

    await run_workers(records, insert, 8)
    return [record.id for _, record in records]


async def reset_leases(admin: Any, held: Sequence[str]) -> None:
    """No leases but those of ``held``, each leased to one of the other live holders."""
    await admin.execute("TRUNCATE leases")
    await admin.execute(
        "INSERT INTO leases (key, holder, expires_at, epoch) SELECT key, 'other-' || (n % $3), $2, 1 "
        "FROM unnest($1::text[]) WITH ORDINALITY AS t(key, n)",
        *(list(held), time.time() + LEASE_S, OTHER_HOLDERS),
    )
    await admin.execute("VACUUM ANALYZE leases")


# claimers ------------------------------------------------------------------------------------------------------


@dataclass
class Claimer:
    """One worker: its own database pool, tables and name."""

    name: str
    db: PostgresDatabase
    table: Table[BatchRecord]
    leases: Leases
    latencies: list[float] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, db: Postgres, name: str) -> Claimer:
        config = PostgresBackendConfig.model_validate(db.backend("sql_postgres") | {"pool_size": 2})
        database = PostgresDatabase(config)
        table = await database.table("batches", BatchRecord)
        return cls(name, database, table, await database.leases("leases"))

    async def new_claim(self, tags: Sequence[str] = RUNNABLE, limit: int = LIMIT) -> list[str]:
        """The engine's claim: ``Leases.claim`` (SELECT ... FOR UPDATE SKIP LOCKED, then one upsert)."""
        claimed = await self.leases.claim(self.table, tags, self.name, LEASE_S, time.time(), limit=limit)
        return [lease.key for _, lease in claimed]

    async def old_claim(self) -> list[str]:
        """The PRE-CHANGE claim: list up to 1,000 active batches, oldest first, then try each one not running here
        with its own upsert until ``LIMIT`` are won (the old scheduler skipped the rest once full)."""
        active = await self.table.list_tagged(ACTIVE_TAGS, limit=OLD_WINDOW)
        now, won = time.time(), list[str]()
        for _owner, stored in active:
            if len(won) >= LIMIT:
                break
            key = stored.value.id
            mine = key in self.claimed or key in won  # the old scheduler skipped the batches it ran
            if not mine and await self.db.execute(OLD_ACQUIRE, key, self.name, now + LEASE_S, now) == 1:
                won.append(key)
        return won

    async def drain(self, claim: Callable[[], Awaitable[list[str]]]) -> None:
        """Claim until a claim finds nothing, timing every claim."""
        while True:
            start = time.perf_counter()
            keys = await claim()
            self.latencies.append(time.perf_counter() - start)
            self.claimed.extend(keys)
            if not keys:
                return


# one run -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one drain measured."""

    layout: str
    algorithm: str
    claimers: int
    free: int
    latencies: list[float]
    claimed: list[str]
    seconds: float
    once: bool  # no batch claimed twice
    complete: bool  # every free batch claimed (and nothing else)

    @property
    def rate(self) -> float:
        return len(self.claimed) / self.seconds


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def drain_run(db: Postgres, admin: Any, ids: list[str], layout: str, algorithm: str, k: int) -> Run:
    """Reset the leases to ``layout``, then ``k`` claimers drain with ``algorithm`` (``new`` or ``old``)."""
    held = ids[: len(ids) - FREE] if layout == "held" else []
    await reset_leases(admin, held)
    claimers = [await Claimer.open(db, f"claimer-{i}") for i in range(k)]
    try:  # each pool is open already (Claimer.open created the tables through it)
        start = time.perf_counter()
        await asyncio.gather(*(c.drain(c.new_claim if algorithm == "new" else c.old_claim) for c in claimers))
        seconds = time.perf_counter() - start
    finally:
        for claimer in claimers:
            await claimer.db.close()
    claimed = [key for c in claimers for key in c.claimed]
    free = set(ids) - set(held)
    latencies = [s for c in claimers for s in c.latencies]
    once = len(claimed) == len(set(claimed))
    return Run(layout, algorithm, k, len(free), latencies, claimed, seconds, once, set(claimed) == free)


# the idle poll -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Idle:
    """An idle poll's cost with every batch held by others."""

    new_ms: list[float]  # the poll: the cancelling claim, then the runnable one
    runnable_ms: list[float]  # the runnable claim alone
    old_ms: list[float]
    rows_read: int  # batch rows the runnable claim's candidate query reads
    scan: str  # how it reads them


async def candidate_rows(admin: Any) -> tuple[int, str]:
    """The batch rows the runnable claim's candidate query reads, and its scan (EXPLAIN ANALYZE, rolled back)."""
    sql = _LEASE_CANDIDATES.format(t="leases", table="batches")
    tr = admin.transaction()
    await tr.start()
    try:
        plan = json.loads(await admin.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", RUNNABLE, time.time(), LIMIT))
    finally:
        await tr.rollback()
    total, scans, nodes = 0, set(), [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if node.get("Relation Name") == "batches":  # rows it returned and rows its filter dropped, every loop
            total += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
            scans.add(str(node["Node Type"]))
        nodes.extend(node.get("Plans", []))
    return int(total), ", ".join(sorted(scans))


async def timed(times: int, work: Callable[[], Awaitable[Any]]) -> list[float]:
    """``work`` run ``times`` times in a row (after one untimed warm-up); the milliseconds of each."""
    await work()
    out = []
    for _ in range(times):
        start = time.perf_counter()
        assert not await work(), "an idle poll claimed something"
        out.append((time.perf_counter() - start) * 1000)
    return out


async def idle_poll(db: Postgres, admin: Any, ids: list[str], polls: int) -> Idle:
    """Every batch held by others; a worker's poll, new (both claims of Scheduler.claim) and old (pre-change)."""
    await reset_leases(admin, ids)
    claimer = await Claimer.open(db, "idle")
    try:

        async def new_poll() -> list[str]:
            return await claimer.new_claim(CANCELLING, CANCELLING_PER_CLAIM) + await claimer.new_claim()

        new_ms, runnable_ms = await timed(polls, new_poll), await timed(polls, claimer.new_claim)
        old_ms = await timed(max(3, polls // 10), claimer.old_claim)
    finally:
        await claimer.db.close()
    return Idle(new_ms, runnable_ms, old_ms, *await candidate_rows(admin))


# report --------------------------------------------------------------------------------------------------------


def print_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    line = "-+-".join("-" * w for w in widths)
    print("\n" + line)
    for row in [header, *rows]:
        cells = zip(row, widths, strict=True)
        print(" | ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(cells)))
        if row is header:
            print(line)
    print(line)


def run_row(run: Run) -> list[str]:
    ms = [s * 1000 for s in run.latencies]
    algorithm = "claim (SKIP LOCKED)" if run.algorithm == "new" else "PRE-CHANGE list+acquire"
    return [
        run.layout, algorithm, str(run.claimers), str(len(run.latencies)), f"{len(run.claimed):,} / {run.free:,}",
        f"{statistics.median(ms):.2f}", f"{percentile(ms, 0.95):.2f}", f"{run.rate:,.0f}",
        "yes" if run.once else "NO", "yes" if run.complete else "NO",
    ]  # fmt: skip


def results(runs: list[Run], idle: Idle, active: int) -> list[Result]:
    """The goals: the engine's claim is exactly-once and complete; an idle poll under 10 ms. How many rows the
    idle claim reads is reported, not a goal: finding that no active batch is free reads every active one."""
    new = [r for r in runs if r.algorithm == "new"]
    old = [r for r in runs if r.algorithm == "old"]
    each = all(r.once and r.complete for r in new)
    rows = [Result("claim", "every free batch claimed, each once", "all runs", "yes" if each else "NO", each)]
    old_ok = f"{sum(r.once and r.complete for r in old)} / {len(old)}"
    rows.append(Result("pre-change", "runs complete, each once", "reference", old_ok, None))
    new_ms, old_ms = statistics.median(idle.new_ms), statistics.median(idle.old_ms)
    goal = f"< {GOAL_IDLE_MS:g} ms"
    rows.append(Result("idle poll", f"median ms, {active:,} active", goal, f"{new_ms:.2f}", new_ms < GOAL_IDLE_MS))
    rows.append(Result("idle claim", "batch rows read", "reported", f"{idle.rows_read:,} ({idle.scan})", None))
    rows.append(Result("pre-change idle poll", "median ms", "reference", f"{old_ms:.1f}", None))
    return rows


def report(runs: list[Run], idle: Idle, active: int) -> list[Result]:
    header = ["layout", "algorithm", "K", "claims", "claimed / free", "p50 ms", "p95 ms", "rows/s", "once", "all"]
    print_rows(header, [run_row(run) for run in runs])
    idle_rows = [
        ("poll: claim cancelling (100) + runnable (4)", idle.new_ms, "-"),
        ("  the runnable claim alone (limit 4)", idle.runnable_ms, f"{idle.rows_read:,} ({idle.scan})"),
        (f"PRE-CHANGE list {OLD_WINDOW} + acquire each", idle.old_ms, "-"),
    ]
    print_rows(
        ["idle poll, all held", "polls", "p50 ms", "p95 ms", "batch rows read"],
        [[name, str(len(ms)), f"{statistics.median(ms):.2f}", f"{percentile(ms, 0.95):.2f}", read]
         for name, ms, read in idle_rows],
    )  # fmt: skip
    table = results(runs, idle, active)
    print_table(table)
    new_ms = statistics.median(idle.new_ms)
    print(
        f"\nverdict: {'PASS' if new_ms < GOAL_IDLE_MS else 'MISS'}: an idle poll at {active:,} active "
        f"batches costs {new_ms:.2f} ms (goal < {GOAL_IDLE_MS:g} ms; pre-change {statistics.median(idle.old_ms):.0f} "
        f"ms); its claim reads {idle.rows_read:,} batch rows ({idle.scan}) to find none: it grows with the active "
        "batches, with a small constant"
    )
    return table


# main ----------------------------------------------------------------------------------------------------------


async def measure(server: Postgres, active: int, claimers: Sequence[int], polls: int) -> list[Result]:
    """Populate a fresh database, drain it in every layout with both algorithms, then time the idle poll."""
    async with fresh_database(server) as db:
        setup = await Claimer.open(db, "setup")
        admin = await asyncpg.connect(host=db.host, port=db.port, user=db.user, password=db.password, database=db.db)
        try:
            started = time.perf_counter()
            ids = await populate(setup.table, active)
            await admin.execute("VACUUM ANALYZE batches")
            print(f"  {active:,} active batches inserted in {time.perf_counter() - started:.1f} s")
            runs = []
            for layout in ("held", "free"):
                for algorithm in ("new", "old"):
                    for k in claimers:
                        runs.append(await drain_run(db, admin, ids, layout, algorithm, k))
                        print(f"  {' | '.join(run_row(runs[-1]))}")
            idle = await idle_poll(db, admin, ids, polls)
        finally:
            await admin.close()
            await setup.db.close()
    return report(runs, idle, active)


async def _main(args: argparse.Namespace) -> int:
    server = Postgres.from_url(args.postgres)
    try:
        await server.execute("SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: no PostgreSQL server at {server.host}:{server.port} ({exc}); pass --postgres URL")
        return 2
    active = args.active or (2_000 if args.quick else 10_000)
    claimers = (1, 4) if args.quick else (1, 4, 16)
    print(
        f"\n{active:,} active batches; layouts: held ({active - FREE:,} oldest leased by {OTHER_HOLDERS} other live "
        f"holders, {FREE} free) and free (none leased); K = {', '.join(map(str, claimers))} claimers (asyncio tasks in "
        f"this process, each its own pool), limit {LIMIT} per claim, until a claim finds nothing"
    )
    table = await measure(server, active, claimers, 20 if args.quick else 50)
    return 0 if all(r.ok is not False for r in table) else 1


def main(argv: list[str] | None = None) -> int:
    """Run every layout, algorithm and K; the exit status is 1 when a goal is missed, 2 without a server."""
    parser = argparse.ArgumentParser(description="Cost of claiming batches on PostgreSQL at 10,000 active batches.")
    parser.add_argument("--quick", action="store_true", help="2,000 active batches and K = 1, 4 instead of 1, 4, 16")
    parser.add_argument("--active", type=int, default=0, help="active batches (default 10,000; 2,000 with --quick)")
    url = os.environ.get(POSTGRES_ENV) or f"postgresql://{getpass.getuser()}@127.0.0.1:5432/test"
    parser.add_argument("--postgres", default=url, help=f"server URL (default: ${POSTGRES_ENV}, else {url})")
    args = parser.parse_args(argv)
    if args.active and args.active <= FREE:
        parser.error(f"--active must be more than {FREE}")
    print(f"llama-batches claims benchmark ({'quick' if args.quick else 'full'}), {sys.version.split()[0]}")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
