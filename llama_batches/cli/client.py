"""What the client commands (``llama-batches batches ...``, ``llama-batches files ...``) share.

They talk to a running ``llama-batches serve`` (or any OpenAI-compatible server) over HTTP with the unmodified
openai SDK. Each sub-app takes ``--base-url`` and ``--api-key`` before its command (or ``$LLAMA_BATCHES_BASE_URL``,
``$LLAMA_BATCHES_API_KEY``); every command takes ``--json`` to print the raw OpenAI object(s) for scripts. A server
error prints ``error: <status> <message>`` and exits 2; so does a server that cannot be reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import openai
import typer
from openai.types import FileObject
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = [
    "DEFAULT_BASE_URL",
    "JsonOption",
    "ServerTarget",
    "client_app",
    "connect",
    "console",
    "errors",
    "fail",
    "file_rows",
    "list_table",
    "print_json",
    "show_fields",
    "when",
]

DEFAULT_BASE_URL = "http://localhost:8321/v1"

console = Console()
errors = Console(stderr=True)

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the raw OpenAI object(s) as JSON instead of a table (for scripts).")
]


@dataclass(frozen=True)
class ServerTarget:
    """Where the client commands send their requests."""

    base_url: str
    api_key: str


def client_app(name: str, help: str) -> typer.Typer:
    """A sub-app whose callback takes the server options and leaves a :class:`ServerTarget` in the context."""
    app = typer.Typer(name=name, help=help, no_args_is_help=True, pretty_exceptions_enable=False)

    @app.callback()
    def target(
        ctx: typer.Context,
        base_url: Annotated[
            str, typer.Option("--base-url", envvar="LLAMA_BATCHES_BASE_URL", help="The server's OpenAI base URL.")
        ] = DEFAULT_BASE_URL,
        api_key: Annotated[
            str, typer.Option("--api-key", envvar="LLAMA_BATCHES_API_KEY", help="Bearer token sent to the server.")
        ] = "none",
    ) -> None:
        ctx.obj = ServerTarget(base_url=base_url.rstrip("/"), api_key=api_key)

    return app


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` on stderr; the exit to raise."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return exc.response.text or exc.response.reason_phrase


@contextmanager
def connect(ctx: typer.Context) -> Iterator[openai.OpenAI]:
    """An SDK client for the sub-app's server; server and connection errors become ``error: ...`` and exit 2."""
    target = ctx.find_object(ServerTarget) or ServerTarget(DEFAULT_BASE_URL, "none")
    with openai.OpenAI(base_url=target.base_url, api_key=target.api_key) as client:
        try:
            yield client
        except openai.APIStatusError as exc:
            raise fail(f"{exc.status_code} {_server_message(exc)}") from exc
        except openai.APIConnectionError as exc:
            reason = exc.__cause__ or exc
            raise fail(
                f"cannot reach the llama-batches server at {target.base_url} ({reason}). Start one with "
                "`llama-batches serve`, or point --base-url (or $LLAMA_BATCHES_BASE_URL) at it."
            ) from exc


def print_json(value: Any) -> None:
    """``value`` (an SDK object or plain data) as indented JSON on stdout."""
    if isinstance(value, openai.BaseModel):
        value = value.to_dict(mode="json")
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


def when(timestamp: int | None, *, seconds: bool = True) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM[:SS]``; empty when unset."""
    if not timestamp:
        return ""
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else ""))


def list_table(*headers: str) -> Table:
    """A compact table for a list; its first column (the ids) is never cut."""
    table = Table(*headers, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, pad_edge=False)
    table.columns[0].no_wrap = True
    return table


def show_fields(rows: list[tuple[str, str]]) -> None:
    """One object as a two-column table (empty values are left out)."""
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        if value:
            table.add_row(name, escape(value))
    console.print(table)


def file_rows(file: FileObject) -> list[tuple[str, str]]:
    """The fields of a file worth showing, in order."""
    return [
        ("id", file.id),
        ("filename", file.filename),
        ("purpose", file.purpose),
        ("bytes", f"{file.bytes:,}"),
        ("created", when(file.created_at)),
        ("expires", when(file.expires_at)),
        ("status", file.status or ""),
    ]
