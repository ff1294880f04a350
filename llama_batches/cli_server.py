"""``llama-batches serve`` and ``llama-batches worker``: the long-running processes.

Logging is configured before the stack is built, so the lines building it writes (skipped APIs, providers and
models) are shown at the command's ``--log-level``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console

from .config import RunConfig, load_config
from .errors import LlamaBatchesError
from .stack import Stack, build_stack

__all__ = ["LOG_FORMAT", "LOG_LEVELS", "configure_logging", "serve", "with_execution", "worker"]

errors = Console(stderr=True)
ENGINE = "inline::reference"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_LEVEL_HELP = "Log level: " + ", ".join(LOG_LEVELS) + "."
_TRACE = 5  # uvicorn's level below debug
_HANDLER_NAME = "llama-batches"

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="llama-stack run config (YAML). Default: $LLAMA_BATCHES_CONFIG, else the embedded default.",
        show_default=False,
    ),
]


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to ``sys.stderr`` as it is at each record (a live progress display redirects it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str) -> None:
    """Show log records at ``level`` (one of :data:`LOG_LEVELS`) and above on stderr. A second call replaces the
    first one's handler instead of adding another."""
    name = level.lower()
    if name not in LOG_LEVELS:
        raise typer.BadParameter(f"'{level}' is not one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(_TRACE if name == "trace" else logging.getLevelNamesMapping()[name.upper()])


def with_execution(config: RunConfig, execute: bool | None) -> RunConfig:
    """``config`` with the batches engine running batches in this process (a worker) or not (API only); None
    leaves the config's ``execute`` as it is."""
    for entry in config.providers.get("batches", []):
        if entry.provider_type == ENGINE and execute is not None:
            entry.config["execute"] = execute
    return config


def _stack(config: Path | None, execute: bool | None) -> Stack:
    from .cli import default_config_path

    try:
        return build_stack(with_execution(load_config(config or default_config_path()), execute))
    except LlamaBatchesError as exc:
        errors.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(code=2) from exc


def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on. Default: server.host, else 127.0.0.1.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port. Default: server.port of the config (8321).")] = None,
    no_worker: Annotated[
        bool,
        typer.Option("--no-worker", help="Serve the API only; separate `llama-batches worker` processes run batches."),
    ] = False,
    log_level: Annotated[str, typer.Option(help=LOG_LEVEL_HELP)] = "info",
) -> None:
    """Serve the stack's OpenAI-compatible API (batches, files, models) over HTTP, with an embedded worker."""
    import uvicorn

    from .server import create_app

    configure_logging(log_level)
    stack = _stack(config, execute=False if no_worker else None)
    bind_host = host or stack.config.server.host or "127.0.0.1"
    bind_port = port if port is not None else stack.config.server.port
    errors.print(f"llama-batches serving on http://{bind_host}:{bind_port}/v1", highlight=False)
    uvicorn.run(create_app(stack), host=bind_host, port=bind_port, log_level=log_level, timeout_graceful_shutdown=10)


def worker(
    config: ConfigOption = None,
    log_level: Annotated[str, typer.Option(help=LOG_LEVEL_HELP)] = "info",
) -> None:
    """Run batches without serving HTTP: claim batches from the shared store, run them, until SIGTERM/SIGINT."""
    configure_logging(log_level)
    stack = _stack(config, execute=True)
    if not any(p.spec.provider_type == ENGINE for p in stack.plan):
        errors.print(f"[bold red]error:[/] a worker needs a batches provider of type {ENGINE} in the config")
        raise typer.Exit(code=2)
    asyncio.run(_work(stack))


async def _work(stack: Stack) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with stack:
        errors.print("llama-batches worker running; SIGTERM or Ctrl-C stops it (batches resume elsewhere)")
        await stop.wait()
