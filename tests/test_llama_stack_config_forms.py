"""Every llama-stack config form, through the real commands: the llama-stack 0.7.3 starter config with the newer
``registered_resources.models`` form (``provider_id: all``, ``provider_model_id: auto``) of llama-stack's current
starter, models on providers llama-batches skips, disabled providers, and the start-up log lines of ``serve``,
``worker`` and ``run`` at their log level."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import pytest

from llama_batches import build_stack

from .conformance.batches import chat_line, jsonl
from .fake_backend import FakeBackend
from .server_process import free_port

DATA = Path(__file__).parent / "data"
CLI = [sys.executable, "-m", "llama_batches.cli"]

# registered_resources of llama-stack's starter after the "all"/"auto" aliasing (llamastack/llama-stack #5471),
# plus a model on a provider llama-batches skips and one on a provider enabled by an environment variable.
NEWER_MODELS = """\
registered_resources:
  models:
  - metadata: {}
    model_id: claude-haiku-4-5-20251001
    provider_id: all
    provider_model_id: auto
    model_type: llm
  - metadata: {}
    model_id: claude-sonnet-4-5-20250514
    provider_id: all
    provider_model_id: auto
    model_type: llm
  - metadata: {}
    model_id: llama-fw
    provider_id: fireworks
    provider_model_id: accounts/fireworks/models/llama-v3p1-8b-instruct
    model_type: llm
  - metadata: {}
    model_id: local-llama
    provider_id: ${env.OLLAMA_URL:+ollama}
    provider_model_id: llama3.2:3b
    model_type: llm
"""
SKIPPED_FIREWORKS = "skipping providers.inference[3] (remote::fireworks): llama-batches does not implement it"
SKIPPED_TRANSFORMERS = "skipping providers.inference[15] (inline::transformers): llama-batches does not implement it"
SKIPPED_MODEL = (
    "skipping registered_resources.models[2] (model 'llama-fw'): its provider 'fireworks' "
    "(remote::fireworks, providers.inference[3]) is skipped: llama-batches does not implement remote::fireworks"
)
ALIAS_LINE = "model 'claude-haiku-4-5-20251001' (provider_id: all) runs on 'openai', the first inference provider"
AUTO_LINE = "model 'claude-haiku-4-5-20251001' (provider_model_id: auto) is 'fake-model' on inference provider 'openai'"


def starter_config(tmp_path: Path) -> Path:
    """llama-stack 0.7.3's starter config, unchanged but for its registered models (the newer form)."""
    text = (DATA / "llama-stack-starter.yaml").read_text()
    assert "registered_resources:\n  models: []\n" in text
    path = tmp_path / "run.yaml"
    path.write_text(text.replace("registered_resources:\n  models: []\n", NEWER_MODELS))
    return path


def starter_env(tmp_path: Path, backend: FakeBackend, **more: str) -> dict[str, str]:
    """The environment a user of the starter sets: OpenAI's URL and key; every other variable the config reads is
    unset, so the conditional providers (ollama, vllm, ...) stay disabled."""
    read = set(re.findall(r"\$\{env\.([A-Za-z0-9_]+)", (DATA / "llama-stack-starter.yaml").read_text()))
    env = {name: value for name, value in os.environ.items() if name not in read}
    env.update(
        SQLITE_STORE_DIR=str(tmp_path / "store"),
        FILES_STORAGE_DIR=str(tmp_path / "files"),
        OPENAI_BASE_URL=backend.base_url,
        OPENAI_API_KEY="test",
        **more,
    )
    return env


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def wait_for_log(path: Path, text: str, process: asyncio.subprocess.Process, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while text not in log_text(path):
            if process.returncode is not None:
                raise RuntimeError(f"the process exited ({process.returncode}): {log_text(path)}")
            await asyncio.sleep(0.05)


@asynccontextmanager
async def command(log: Path, env: dict[str, str], *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``llama-batches *args`` as a real process logging to ``log``; SIGTERM (then SIGKILL) when the block ends."""
    with log.open("ab") as handle:
        process = await asyncio.create_subprocess_exec(*CLI, *args, stdout=handle, stderr=handle, env=env)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def serving(tmp_path: Path, env: dict[str, str], log_level: str) -> AsyncIterator[tuple[str, Path]]:
    """``llama-batches serve`` on the starter config; its base URL once /v1/health answers, and its log."""
    port, log = free_port(), tmp_path / f"serve-{log_level}.log"
    args = ("serve", "--config", str(starter_config(tmp_path)), "--port", str(port), "--log-level", log_level)
    async with command(log, env, *args) as process:
        await wait_for_log(log, f"serving on http://127.0.0.1:{port}/v1", process)
        probe = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        async with probe, asyncio.timeout(30):
            while True:
                try:
                    await probe.models.list()
                    break
                except openai.APIConnectionError:
                    await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1", log


async def run_batch(client: openai.AsyncOpenAI, model: str) -> list[dict[str, object]]:
    """One chat request on ``model`` as a batch; the lines of its output file once it completes."""
    upload = await client.files.create(file=("in.jsonl", jsonl([chat_line(0, model=model)])), purpose="batch")
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    async with asyncio.timeout(30):
        while batch.status not in ("completed", "failed", "cancelled", "expired"):
            await asyncio.sleep(0.1)
            batch = await client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id, batch
    content = await client.files.content(batch.output_file_id)
    return [json.loads(line) for line in content.text.splitlines()]


async def test_serve_runs_the_starter_config_with_the_newer_model_form(
    tmp_path: Path, fake_backend: FakeBackend
) -> None:
    async with serving(tmp_path, starter_env(tmp_path, fake_backend), "info") as (base_url, log):
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused") as client:
            listed = {m.id: m.owned_by for m in (await client.models.list()).data}
            [result] = await run_batch(client, "claude-sonnet-4-5-20250514")
        text = log_text(log)
    assert listed["claude-haiku-4-5-20251001"] == "openai" and listed["claude-sonnet-4-5-20250514"] == "openai"
    assert "llama-fw" not in listed and "local-llama" not in listed and "fake-model" in listed
    response = result["response"]
    assert isinstance(response, dict) and response["status_code"] == 200
    assert response["body"]["model"] == "fake-model"  # the alias, sent to the backend as the model it resolved to
    for line in (
        SKIPPED_FIREWORKS,
        SKIPPED_TRANSFORMERS,
        "skipping API 'safety'",
        SKIPPED_MODEL,
        ALIAS_LINE,
        AUTO_LINE,
    ):
        assert line in text, line
    assert "providers.inference[1]" not in text  # ollama is disabled (OLLAMA_URL unset), not skipped
    assert text.index(SKIPPED_FIREWORKS) < text.index("serving on")  # shown at start, before serving


async def test_serve_at_warning_level_shows_the_skipped_model_only(tmp_path: Path, fake_backend: FakeBackend) -> None:
    async with serving(tmp_path, starter_env(tmp_path, fake_backend), "warning") as (_, log):
        text = log_text(log)
    assert SKIPPED_MODEL in text
    assert SKIPPED_FIREWORKS not in text and ALIAS_LINE not in text


async def test_worker_and_run_show_the_skipped_providers_at_their_log_level(
    tmp_path: Path, fake_backend: FakeBackend
) -> None:
    env = starter_env(tmp_path, fake_backend)
    config = starter_config(tmp_path)
    log = tmp_path / "worker.log"
    async with command(log, env, "worker", "--config", str(config), "--log-level", "info") as worker:
        await wait_for_log(log, "worker running", worker)
    text = log_text(log)
    assert text.index(SKIPPED_FIREWORKS) < text.index("worker running") and SKIPPED_MODEL in text

    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(jsonl([chat_line(0, model="claude-haiku-4-5-20251001")]))
    process = await asyncio.create_subprocess_exec(
        *CLI, "run", str(requests), "--config", str(config), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert SKIPPED_FIREWORKS in err.decode() and SKIPPED_MODEL in err.decode()
    assert "completed 1" in out.decode()
    [result] = [json.loads(line) for line in (tmp_path / "requests.output.jsonl").read_text().splitlines()]
    assert result["response"]["body"]["model"] == "fake-model"


@pytest.mark.parametrize("ollama", [False, True])
async def test_a_provider_enabled_by_its_variable_comes_first_for_all(
    tmp_path: Path, fake_backend: FakeBackend, ollama: bool
) -> None:
    more = {"OLLAMA_URL": fake_backend.base_url} if ollama else {}
    async with build_stack(starter_config(tmp_path), env=starter_env(tmp_path, fake_backend, **more)) as stack:
        inference = [p.path for p in stack.plan if p.api.value == "inference"]
        models = {m.identifier: m.provider_id for m in await stack.models.list_models()}
    first = "ollama" if ollama else "openai"
    assert inference == (["providers.inference[1]", "providers.inference[7]"] if ollama else ["providers.inference[7]"])
    assert models["claude-haiku-4-5-20251001"] == first
    assert ("local-llama" in models) is ollama  # the model on ${env.OLLAMA_URL:+ollama} follows its provider


async def test_an_unknown_log_level_is_a_usage_error_before_anything_starts(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *CLI, "worker", "--config", str(tmp_path / "absent.yaml"), "--log-level", "loud",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    text = " ".join(err.decode().replace("│", " ").split())  # rich draws the usage error in a box
    assert "Invalid value for --log-level: 'loud' is not one of critical, error, warning, info, debug" in text
