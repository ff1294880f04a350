"""What ``bench_llama_stack.py`` measured per provider, and the side-by-side table that closes its run."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from bench._stack_parts import TreeRss
from bench._stack_scenarios import Kill, Latency, Memory

__all__ = ["ProviderRun", "Race", "Throughput", "print_report"]

GOAL = (
    "llama-batches inside llama-stack: throughput >= llama-stack's own inline::reference; exactly 1 batch and "
    "1 execution from 64 racing creates; after kill -9 mid-batch, the batch completes with every custom_id once"
)
Row = tuple[str, str, str, str]


@dataclass
class Throughput:
    status: str = "not run"
    completed: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    posts: int = 0
    rss: TreeRss | None = None


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


@dataclass
class ProviderRun:
    provider: str
    throughput: Throughput = field(default_factory=Throughput)
    race: Race = field(default_factory=Race)
    latency: Latency = field(default_factory=Latency)
    memory: Memory = field(default_factory=Memory)
    kill: Kill = field(default_factory=Kill)
    crash: str = ""


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


def _throughput_rows(ours: ProviderRun, ref: ProviderRun, args: argparse.Namespace) -> list[Row]:
    a, b = ours.throughput, ref.throughput
    ratio = a.rps / b.rps if b.rps else float("inf") if a.rps else 0.0
    rows = [
        ("throughput: batch status / completed", f"{a.status} / {a.completed}", f"{b.status} / {b.completed}", "-"),
        ("backend POSTs for the batch", str(a.posts), str(b.posts), "-"),
        ("wall time create -> completed", f"{a.seconds:.2f} s", f"{b.seconds:.2f} s", "-"),
        ("requests/s", f"{a.rps:.1f}", f"{b.rps:.1f}", "-"),
        ("ratio llama-batches / reference", f"{ratio:.2f}x", "", _verdict(a.rps > 0 and a.rps >= b.rps)),
        ("ceiling concurrency / latency", f"{args.concurrency / (args.latency_ms / 1000):.0f} req/s", "", "-"),
    ]
    server = zip(SERVER_FIGURES, _server_cells(a), _server_cells(b), strict=True)
    return rows + [(name, x, y, "-") for name, x, y in server]


def _race_rows(ours: ProviderRun, ref: ProviderRun) -> list[Row]:
    race = ours.race
    verdict = {
        RACE_FIGURES[0]: race.ids == 1 and not race.errors and "throughput/race" not in ours.crash,
        RACE_FIGURES[2]: race.lines > 0 and race.answers == race.lines and race.max_per_request == 1,
    }
    cells = zip(RACE_FIGURES, _race_cells(race), _race_cells(ref.race), strict=True)
    return [(name, x, y, _verdict(verdict[name]) if name in verdict else "-") for name, x, y in cells]


def _latency_rows(ours: ProviderRun, ref: ProviderRun) -> list[Row]:
    a, b = ours.latency, ref.latency
    return [
        ("latency: batch status", a.status, b.status, "-"),
        ("latency: requests/s", f"{a.rps:.1f}", f"{b.rps:.1f}", "-"),
        (
            "latency: % of ceiling",
            f"{a.rps / a.ceiling:.1%}" if a.ceiling else "-",
            f"{b.rps / b.ceiling:.1%}" if b.ceiling else "-",
            "-",
        ),
        ("latency: ceiling window / latency", f"{a.ceiling:.0f} req/s", "", "-"),
    ]


def _memory_rows(ours: ProviderRun, ref: ProviderRun) -> list[Row]:
    a, b = ours.memory, ref.memory
    mb = "{:.0f} MB".format
    return [
        ("memory: input file / lines", f"{a.input_mb:.1f} MB / {a.lines}", f"{b.input_mb:.1f} MB / {b.lines}", "-"),
        ("memory: batch status", a.status, b.status, "-"),
        ("memory: wall time create -> terminal", f"{a.seconds:.1f} s", f"{b.seconds:.1f} s", "-"),
        ("memory: server RSS before upload", mb(a.baseline_mb), mb(b.baseline_mb), "-"),
        (
            "memory: growth, peak during upload",
            mb(a.upload_peak_mb - a.baseline_mb),
            mb(b.upload_peak_mb - b.baseline_mb),
            "-",
        ),
        (
            "memory: growth, peak upload + batch",
            mb(a.batch_peak_mb - a.baseline_mb),
            mb(b.batch_peak_mb - b.baseline_mb),
            "-",
        ),
        ("memory: server VmHWM", mb(a.hwm_mb), mb(b.hwm_mb), "-"),
    ]


def _kill_cells(kill: Kill) -> list[str]:
    return [
        kill.status,
        f"{kill.seconds_after_restart:.1f} s",
        f"{kill.answered_at_kill} / {kill.lines}",
        f"{kill.once} / {kill.lines}",
        f"{kill.missing} / {kill.duplicated}",
        f"{kill.backend_answers} ({kill.backend_answers - kill.lines:+d})",
    ]


KILL_FIGURES = (
    "kill: status after restart",
    "kill: seconds restart -> status",
    "kill: answered at the kill",
    "kill: custom_ids answered once",
    "kill: missing / duplicated",
    "kill: backend answers (re-sent)",
)


def _kill_rows(ours: ProviderRun, ref: ProviderRun) -> list[Row]:
    kill = ours.kill
    ok = kill.status == "completed" and kill.once == kill.lines > 0
    cells = zip(KILL_FIGURES, _kill_cells(kill), _kill_cells(ref.kill), strict=True)
    return [(name, x, y, _verdict(ok) if name == KILL_FIGURES[3] else "-") for name, x, y in cells]


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _rows(ours: ProviderRun, ref: ProviderRun, args: argparse.Namespace) -> list[Row]:
    """(figure, llama-batches, reference, result) rows of the parts run; PASS/FAIL only on the goal's figures."""
    rows: list[Row] = []
    if "throughput" in args.parts:
        rows += _throughput_rows(ours, ref, args)
    if "race" in args.parts:
        rows += _race_rows(ours, ref)
    if "latency" in args.parts:
        rows += _latency_rows(ours, ref)
    if "memory" in args.parts:
        rows += _memory_rows(ours, ref)
    if "kill" in args.parts:
        rows += _kill_rows(ours, ref)
    return rows


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
    print(f"\n{'PASS' if ok else 'FAIL'} on the goals of the parts run ({','.join(args.parts)}) of: {GOAL}")
    return ok
