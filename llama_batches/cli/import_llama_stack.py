"""``llama-batches import-llama-stack``: bring a llama-stack deployment's batches and files over, ids kept."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import LlamaBatchesError
from ..migrate import ImportOptions, ImportReport, ItemResult, Outcome, Unfinished, import_llama_stack
from ..migrate.llama_stack import Kind
from ..principal import ANONYMOUS

__all__ = ["import_llama_stack_command"]

console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)


def _print_item(item: ItemResult) -> None:
    detail = f"  ({escape(item.detail)})" if item.detail else ""
    console.print(f"{item.kind:5} {item.id}  owner={escape(item.owner)}  {item.outcome.value}{detail}")


def _summary(report: ImportReport, kind: Kind, label: str) -> str:
    done = Outcome.would_import if report.dry_run else Outcome.imported
    verb = "to import" if report.dry_run else "imported"
    present, failed = report.count(kind, Outcome.present), report.count(kind, Outcome.failed)
    return (
        f"{label}: {report.found(kind)} found, {report.count(kind, done)} {verb}, {present} already imported, "
        f"{failed} failed"
    )


def _print_report(report: ImportReport) -> None:
    source = report.source
    console.print(
        f"llama-stack batches: table {source.batches.table} in {source.batches.database}, keys {source.batches.prefix}*"
    )
    console.print(
        f"llama-stack files: table {source.files.table} in {source.files.database}, content in "
        f"{source.files.storage_dir}"
    )
    console.print(_summary(report, "file", "files"))
    console.print(_summary(report, "batch", "batches"))
    for failure in report.failures:
        errors.print(f"[red]{failure.kind} {failure.id} failed:[/] {escape(failure.detail)}")
    files, batches = report.count("file", Outcome.imported), report.count("batch", Outcome.imported)
    if report.dry_run:
        files, batches = report.count("file", Outcome.would_import), report.count("batch", Outcome.would_import)
        console.print(f"dry run: would import {files} files and {batches} batches; nothing was changed")
    elif files or batches:
        console.print(f"imported {files} files and {batches} batches")
    else:
        console.print("nothing new to import: every file and batch found was imported before")


def import_llama_stack_command(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", help="The llama-stack run config of the deployment to import.", dir_okay=False),
    ],
    into: Annotated[
        Path | None,
        typer.Option(
            help="The llama-batches run config to import into. Default: --config itself, which `llama-batches "
            "serve --config` then serves.",
            dir_okay=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be imported; change nothing.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="One line per file and batch.")] = False,
    owner: Annotated[
        str, typer.Option(help="Principal of the rows llama-stack stored without an owner (no auth).")
    ] = ANONYMOUS,
    unfinished: Annotated[
        Unfinished,
        typer.Option(
            help="Batches llama-stack left validating, in progress or finalizing: resume (run them again from their "
            "first line, or expire them past their window) or fail (imported as failed)."
        ),
    ] = Unfinished.resume,
) -> None:
    """Import a llama-stack 0.7.3 deployment's batches and files, with their ids; running it again imports nothing
    new. Exits 1 when an item could not be imported, 2 when the deployment or the config cannot be used."""
    options = ImportOptions(
        source=config, destination=into, dry_run=dry_run, default_owner=owner, unfinished=unfinished
    )
    try:
        report = asyncio.run(import_llama_stack(options, on_item=_print_item if verbose else None))
    except LlamaBatchesError as exc:
        errors.print(f"[bold red]error:[/] {escape(exc.message)}")
        raise typer.Exit(code=2) from exc
    _print_report(report)
    if report.failures:
        raise typer.Exit(code=1)
