"""``llama-batches batches ...``: create, get, list, cancel and wait for batches on a running server."""

from __future__ import annotations

import time
from typing import Annotated

import openai
import typer
from openai.types import Batch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from .client import JsonOption, client_app, connect, console, errors, list_table, print_json, show_fields, when

__all__ = ["batches_app"]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})

batches_app = client_app("batches", "Create, inspect, cancel and follow batches on a running llama-batches server.")

BatchIdArgument = Annotated[str, typer.Argument(help="The batch id (batch_...).", show_default=False)]


def _metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        metadata[key] = value
    return metadata


def _counts(batch: Batch) -> tuple[int, int, int]:
    counts = batch.request_counts
    return (counts.completed, counts.failed, counts.total) if counts else (0, 0, 0)


def _show(batch: Batch) -> None:
    completed, failed, total = _counts(batch)
    show_fields(
        [
            ("id", batch.id),
            ("status", batch.status),
            ("endpoint", batch.endpoint),
            ("model", batch.model or ""),
            ("requests", f"{completed} completed, {failed} failed, {total} total"),
            ("input file", batch.input_file_id),
            ("output file", batch.output_file_id or ""),
            ("error file", batch.error_file_id or ""),
            ("created", when(batch.created_at)),
            ("in progress", when(batch.in_progress_at)),
            ("completed", when(batch.completed_at)),
            ("failed", when(batch.failed_at)),
            ("cancelled", when(batch.cancelled_at)),
            ("expires", when(batch.expires_at)),
            ("metadata", ", ".join(f"{k}={v}" for k, v in (batch.metadata or {}).items())),
        ]
    )
    _print_errors(batch, console)


def _output(batch: Batch, as_json: bool) -> None:
    if as_json:
        print_json(batch)
    else:
        _show(batch)


def _print_errors(batch: Batch, out: Console, limit: int = 20) -> None:
    found = (batch.errors.data if batch.errors else None) or []
    for error in found[:limit]:
        where = f"line {error.line}: " if error.line is not None else ""
        out.print(escape(f"{where}{error.code}: {error.message}"), highlight=False, soft_wrap=True)
    if len(found) > limit:
        out.print(f"... and {len(found) - limit} more errors (--json shows them all)", highlight=False)


@batches_app.command()
def create(
    ctx: typer.Context,
    input_file_id: Annotated[
        str, typer.Option("--input-file-id", help="A file uploaded with purpose 'batch'.", show_default=False)
    ],
    endpoint: Annotated[
        str, typer.Option(help="/v1/chat/completions, /v1/completions or /v1/embeddings.", show_default=False)
    ],
    completion_window: Annotated[str, typer.Option(help="How long the batch may take.")] = "24h",
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="KEY=VALUE, repeatable.", show_default=False)
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Sent as the Idempotency-Key header: a retry with the same key gets the same batch."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a batch (idempotently, with --idempotency-key)."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    with connect(ctx) as client:
        raw = client.batches.with_raw_response.create(
            input_file_id=input_file_id,
            endpoint=endpoint,  # type: ignore[arg-type]  # the server names an endpoint it does not serve
            completion_window=completion_window,  # type: ignore[arg-type]
            metadata=_metadata(metadata) or openai.omit,
            extra_headers=headers,
        )
        batch = raw.parse()
    _output(batch, as_json)
    if not as_json and raw.headers.get("Idempotent-Replayed") == "true":
        console.print("an existing batch: same idempotency key and parameters", highlight=False)


@batches_app.command()
def get(ctx: typer.Context, batch_id: BatchIdArgument, as_json: JsonOption = False) -> None:
    """Show a batch."""
    with connect(ctx) as client:
        batch = client.batches.retrieve(batch_id)
    _output(batch, as_json)


@batches_app.command("list")
def list_batches(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Page size (1 to 100).")] = 20,
    after: Annotated[str | None, typer.Option(help="A batch id: the page starts after it.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Every batch, following the pages.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List batches, newest first."""
    with connect(ctx) as client:
        page = client.batches.list(limit=limit, after=after or openai.omit)
        found = list(page) if all_pages else page.data  # iterating a page fetches the next ones
    more = page.has_more and not all_pages
    if as_json:
        print_json({"object": "list", "data": [batch.to_dict(mode="json") for batch in found], "has_more": more})
        return
    table = list_table("id", "status", "completed", "failed", "total", "created")
    for batch in found:
        completed, failed, total = _counts(batch)
        table.add_row(
            batch.id, batch.status, str(completed), str(failed), str(total), when(batch.created_at, seconds=False)
        )
    console.print(table)
    if more and found:
        console.print(f"more: --after {found[-1].id} (or --all)", highlight=False)


@batches_app.command()
def cancel(ctx: typer.Context, batch_id: BatchIdArgument, as_json: JsonOption = False) -> None:
    """Cancel a batch: dispatch stops and the results so far are written."""
    with connect(ctx) as client:
        batch = client.batches.cancel(batch_id)
    _output(batch, as_json)


def _progress(out: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.fields[status]:<11}"),
        BarColumn(bar_width=16),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[rate]:.1f} req/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=out,
    )


def _update(progress: Progress, task: TaskID, batch: Batch, rate: float) -> None:
    completed, failed, total = _counts(batch)
    text = f"{completed + failed}/{total or '?'} completed {completed} failed {failed}"
    progress.update(
        task, completed=completed + failed, total=total or None, status=batch.status, counts=text, rate=rate
    )


def _follow(client: openai.OpenAI, batch_id: str, interval: float, out: Console) -> Batch:
    batch = client.batches.retrieve(batch_id)
    started, done_before = time.monotonic(), sum(_counts(batch)[:2])
    with _progress(out) as progress:
        task = progress.add_task("batch", total=None, status=batch.status, counts="", rate=0.0)
        while True:
            rate = (sum(_counts(batch)[:2]) - done_before) / max(time.monotonic() - started, 1e-6)
            _update(progress, task, batch, rate)
            if batch.status in TERMINAL:
                return batch
            time.sleep(interval)
            batch = client.batches.retrieve(batch_id)


@batches_app.command()
def wait(
    ctx: typer.Context,
    batch_id: BatchIdArgument,
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.01)] = 1.0,
    as_json: JsonOption = False,
) -> None:
    """Follow a batch with a progress bar until it ends; exit 0 only if it completed, 1 otherwise."""
    with connect(ctx) as client:
        try:
            batch = _follow(client, batch_id, interval, errors if as_json else console)
        except KeyboardInterrupt:
            errors.print(f"interrupted: batch {batch_id} keeps running on the server", highlight=False)
            raise typer.Exit(code=130) from None
    if as_json:
        print_json(batch)
    elif batch.output_file_id or batch.error_file_id:
        console.print(f"output file: {batch.output_file_id or '-'}  error file: {batch.error_file_id or '-'}")
    if batch.status != "completed":
        if not as_json:
            _print_errors(batch, errors)
        errors.print(f"[bold red]batch {batch.id} ended {batch.status}[/]", highlight=False)
        raise typer.Exit(code=1)
