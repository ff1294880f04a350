"""``llama-batches serve`` and ``llama-batches worker``: the long-running processes.

Logging is configured before the stack is built, so the lines building it writes (skipped APIs, providers and
models) are shown at the command's ``--log-level``.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..config import default_config_path, load_config
from ..errors import LlamaBatchesError
from ..logs import LOG_LEVELS, configure_logging
from ..stack import Stack, build_stack
from ..workers import with_execution, works_in_background

__all__ = ["LOG_LEVEL_HELP", "ConfigOption", "logging_at", "serve", "worker"]

errors = Console(stderr=True)
LOG_LEVEL_HELP = "Log level: " + ", ".join(LOG_LEVELS) + "."

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="llama-stack run config (YAML). Default: $LLAMA_BATCHES_CONFIG, else the embedded default.",
        show_default=False,
    ),
]


def logging_at(level: str) -> None:
    """:func:`llama_batches.logs.configure_logging`, an unknown level being a usage error of ``--log-level``."""
    try:
        configure_logging(level)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from exc


def _stack(config: Path | None, execute: bool | None) -> Stack:
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

    from ..server import create_app

    logging_at(log_level)
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
    logging_at(log_level)
    stack = _stack(config, execute=True)
    if not any(works_in_background(p.spec.config_class) for p in stack.plan):
        errors.print(
            "[bold red]error:[/] a worker needs a provider that runs batches (inline::reference) in the config"
        )
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
