"""The ``llama-batches`` command."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..api import BatchStatus
from ..config import default_config_path
from ..errors import LlamaBatchesError
from ..local_run import RunPlan, run_file
from ..registry import default_registry
from ..stack import build_stack
from .batches import batches_app
from .db import db_app
from .files import files_app
from .import_llama_stack import import_llama_stack_command
from .server import serve, worker

__all__ = ["app", "default_config_path", "main"]

app = typer.Typer(
    name="llama-batches",
    help="OpenAI-compatible Batches API in the llama-stack style, with idempotent batch creation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="llama-stack run config (YAML). Default: $LLAMA_BATCHES_CONFIG, else the embedded default "
        "(SQLite + local files + SmolLM2 on llama.cpp).",
        show_default=False,
    ),
]


app.add_typer(batches_app, name="batches")
app.add_typer(files_app, name="files")
app.add_typer(db_app, name="db")


def _fail(exc: LlamaBatchesError) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {exc.message}", highlight=False)
    return typer.Exit(code=2)


@app.command()
def providers() -> None:
    """List the providers installed in this environment."""
    registry = default_registry()
    table = Table("api", "provider_type", "module", "extra")
    for (api, provider_type), spec in sorted(registry.specs.items()):
        table.add_row(api.value, provider_type, spec.module, spec.extra or "")
    console.print(table)
    for plugin in registry.broken:  # one unwrapped line each, so that the reason can be read and searched whole
        console.print(
            f"broken plugin {plugin.label}, skipped: {plugin.reason}", markup=False, highlight=False, soft_wrap=True
        )


@app.command()
def models(config: ConfigOption = None) -> None:
    """List the models the configured stack can run."""

    async def run() -> None:
        async with build_stack(config or default_config_path()) as stack:
            found = await stack.models.list_models()
        table = Table("model", "provider", "provider model id", "type")
        for model in found:
            table.add_row(model.identifier, model.provider_id, model.provider_resource_id, model.model_type.value)
        console.print(table)

    try:
        asyncio.run(run())
    except LlamaBatchesError as exc:
        raise _fail(exc) from exc


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    config: ConfigOption = None,
    model: Annotated[str | None, typer.Option(help="Model id; the first model of the stack by default.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 128,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
) -> None:
    """Send one chat message through the stack's inference and print the answer."""

    async def run() -> str:
        async with build_stack(config or default_config_path()) as stack:
            model_id = model or (await stack.models.list_models())[0].identifier
            answer = await stack.inference.openai_chat_completion(
                model_id, [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=temperature
            )
        return answer.choices[0].message.content or ""

    try:
        console.print(asyncio.run(run()), highlight=False)
    except LlamaBatchesError as exc:
        raise _fail(exc) from exc


@app.command()
def run(
    input: Annotated[
        Path, typer.Argument(help="JSONL file of requests (OpenAI batch input format).", exists=True, dir_okay=False)
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write results. Default: INPUT.output.jsonl.")
    ] = None,
    errors_path: Annotated[
        Path | None, typer.Option("--errors", help="Where to write failed requests. Default: INPUT.errors.jsonl.")
    ] = None,
    config: ConfigOption = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Idempotency key. Default: derived from the file's content, so a re-run resumes."),
    ] = None,
) -> None:
    """Run a JSONL file as one batch in this process, with a progress bar; exits non-zero unless it completes."""
    stem = input.with_suffix("") if input.suffix == ".jsonl" else input
    plan = RunPlan(
        config=config or default_config_path(),
        input=input,
        output=output or stem.with_name(stem.name + ".output.jsonl"),
        errors=errors_path or stem.with_name(stem.name + ".errors.jsonl"),
        idempotency_key=idempotency_key,
    )
    try:
        batch = asyncio.run(run_file(plan, console))
    except LlamaBatchesError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        errors.print("interrupted: run the same command again to resume the batch")
        raise typer.Exit(code=130) from None
    if batch.status != BatchStatus.completed:
        for error in ((batch.errors.data if batch.errors else None) or [])[:20]:
            errors.print(f"line {error.line}: {error.code}: {error.message}", highlight=False)
        errors.print(f"[bold red]batch {batch.id} ended {batch.status}[/]")
        raise typer.Exit(code=1)


app.command()(serve)
app.command()(worker)
app.command("import-llama-stack")(import_llama_stack_command)


def main() -> None:
    """Entry point of the ``llama-batches`` script."""
    app()
