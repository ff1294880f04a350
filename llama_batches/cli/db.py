"""``llama-batches db ...``: the schema version of every store of the configured databases, and upgrading it.

A process migrates the stores it opens at start (unless its backend has ``auto_migrate: false``); these commands
are for operators who migrate by hand, before starting a new release on a shared database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..config import default_config_path, load_config
from ..errors import LlamaBatchesError
from ..storage import StorageBackends
from ..storage.config import PostgresBackendConfig, SqliteBackendConfig
from ..storage.postgres import PostgresDatabase
from ..storage.schema import StoreVersion
from ..storage.sqlite import SqliteDatabase

__all__ = ["db_app"]

db_app = typer.Typer(
    name="db",
    help="Schema versions of the configured SQLite and PostgreSQL databases, and upgrading them.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="llama-stack run config (YAML). Default: $LLAMA_BATCHES_CONFIG, else the embedded default.",
        show_default=False,
    ),
]
Action = Callable[[SqliteDatabase | PostgresDatabase], Awaitable[list[StoreVersion]]]


async def _each_database(config_path: Path, action: Action) -> list[tuple[str, list[StoreVersion]]]:
    """``action`` on every SQLite and PostgreSQL backend of the config, by backend name."""
    config = load_config(config_path)
    backends = StorageBackends(config.storage.backends)
    done: list[tuple[str, list[StoreVersion]]] = []
    try:
        for name, backend_config in sorted(config.storage.backends.items()):
            if isinstance(backend_config, SqliteBackendConfig) and not _sqlite_exists(backend_config.db_path):
                done.append((name, []))  # not created yet: a status must not create it
            elif isinstance(backend_config, SqliteBackendConfig | PostgresBackendConfig):
                database = backends.backend(name, path=f"storage.backends.{name}")
                if isinstance(database, SqliteDatabase | PostgresDatabase):
                    done.append((name, await action(database)))
    finally:
        await backends.close()
    return done


def _sqlite_exists(db_path: str) -> bool:
    return db_path == ":memory:" or Path(db_path).expanduser().exists()


def _state(store: StoreVersion) -> str:
    if store.version > store.latest:
        return "newer than this release"
    if store.pending:
        return f"{store.pending} pending" + (" (unversioned)" if store.version == 0 else "")
    return "up to date"


def _run(config: Path | None, action: Action) -> list[tuple[str, list[StoreVersion]]]:

    try:
        return asyncio.run(_each_database(config or default_config_path(), action))
    except LlamaBatchesError as exc:
        errors.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(code=2) from exc


@db_app.command()
def status(config: ConfigOption = None) -> None:
    """Print the schema version of every store (table) of every database, and the latest this release knows."""
    table = Table("backend", "store", "kind", "version", "latest", "state")
    for backend, stores in _run(config, lambda database: database.schema_status()):
        if not stores:
            table.add_row(backend, "", "", "", "", "no tables yet (created at first start)")
        for store in stores:
            row = (backend, store.store, store.kind.value, str(store.version), str(store.latest), _state(store))
            table.add_row(*row)
    console.print(table)


@db_app.command()
def upgrade(config: ConfigOption = None) -> None:
    """Apply every pending migration of every store of every database (each database in one transaction)."""
    applied = 0
    for backend, stores in _run(config, lambda database: database.upgrade()):
        for store in stores:
            if store.pending:
                applied += store.pending
                console.print(f"{backend}: {store.store} ({store.kind.value}) {store.version} -> {store.latest}")
    console.print(f"{applied} migration(s) applied" if applied else "every store is up to date")
