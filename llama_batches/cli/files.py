"""``llama-batches files ...``: upload, list, get, download and delete files on a running server."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Annotated

import openai
import typer
from openai.types import FileObject
from rich.markup import escape

from ..api import FilePurpose, Order
from .client import JsonOption, client_app, connect, console, file_rows, list_table, print_json, show_fields, when

__all__ = ["files_app"]

files_app = client_app("files", "Upload, list, download and delete files on a running llama-batches server.")

FileIdArgument = Annotated[str, typer.Argument(help="The file id (file-...).", show_default=False)]


def _output(file: FileObject, as_json: bool) -> None:
    if as_json:
        print_json(file)
    else:
        show_fields(file_rows(file))


@files_app.command()
def upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="The file to upload (JSONL for a batch).", exists=True, dir_okay=False)],
    purpose: Annotated[FilePurpose, typer.Option(help="What the file is for.")] = FilePurpose.batch,
    as_json: JsonOption = False,
) -> None:
    """Upload a file, streamed from disk."""
    with connect(ctx) as client, path.open("rb") as handle:
        file = client.files.create(file=(path.name, handle), purpose=purpose.value)  # type: ignore[arg-type]
    _output(file, as_json)


@files_app.command("list")
def list_files(
    ctx: typer.Context,
    purpose: Annotated[FilePurpose | None, typer.Option(help="Only files with this purpose.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many files.")] = 100,
    order: Annotated[Order, typer.Option(help="By creation time.")] = Order.desc,
    as_json: JsonOption = False,
) -> None:
    """List files."""
    with connect(ctx) as client:
        page = client.files.list(limit=limit, order=order.value, purpose=purpose.value if purpose else openai.omit)
    if as_json:
        print_json(page)
        return
    table = list_table("id", "filename", "purpose", "bytes", "created")
    for file in page.data:
        created = when(file.created_at, seconds=False)
        table.add_row(file.id, escape(file.filename), file.purpose, f"{file.bytes:,}", created)
    console.print(table)
    if page.has_more and page.data:
        console.print(f"more files than --limit {limit}", highlight=False)


@files_app.command()
def get(ctx: typer.Context, file_id: FileIdArgument, as_json: JsonOption = False) -> None:
    """Show a file's metadata."""
    with connect(ctx) as client:
        file = client.files.retrieve(file_id)
    _output(file, as_json)


def _copy(chunks: Iterable[bytes], target: IO[bytes]) -> int:
    written = 0
    for chunk in chunks:
        target.write(chunk)
        written += len(chunk)
    target.flush()
    return written


@files_app.command()
def download(
    ctx: typer.Context,
    file_id: FileIdArgument,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write it. Default: stdout.", dir_okay=False)
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Download a file's content, streamed to OUTPUT (written only once complete) or to stdout."""
    with connect(ctx) as client, client.files.with_streaming_response.content(file_id) as response:
        if output is None:
            _copy(response.iter_bytes(), sys.stdout.buffer)
            return
        partial = output.with_name(output.name + ".part")
        try:
            with partial.open("wb") as handle:
                written = _copy(response.iter_bytes(), handle)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
    if as_json:
        print_json({"id": file_id, "path": str(output), "bytes": written})
    else:
        console.print(f"wrote {written:,} bytes to {escape(str(output))}", highlight=False)


@files_app.command()
def delete(ctx: typer.Context, file_id: FileIdArgument, as_json: JsonOption = False) -> None:
    """Delete a file."""
    with connect(ctx) as client:
        deleted = client.files.delete(file_id)
    if as_json:
        print_json(deleted)
    else:
        console.print(f"deleted {deleted.id}" if deleted.deleted else f"not deleted: {deleted.id}", highlight=False)
