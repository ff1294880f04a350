"""The llama-batches command, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conformance.batches import chat_line, jsonl
from .fake_backend import FakeBackend
from .test_provider_reference import reference_config

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "llama_batches.cli"]


async def llama_batches(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """Run the command; its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, backend: FakeBackend, **engine: Any) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(reference_config(tmp_path, backend, **engine)))
    return path


async def test_run_writes_results_and_exits_0(tmp_path: Path, fake_backend: FakeBackend) -> None:
    config = write_config(tmp_path, fake_backend)
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(jsonl([chat_line(i) for i in range(30)]))
    code, out, err = await llama_batches("run", str(requests), "--config", str(config))
    assert code == 0, err
    assert "completed 30" in out and "failed 0" in out
    results = [json.loads(line) for line in (tmp_path / "requests.output.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(30))
    assert not (tmp_path / "requests.errors.jsonl").exists()

    again = await llama_batches("run", str(requests), "--config", str(config), "-o", str(tmp_path / "again.jsonl"))
    assert again[0] == 0
    assert sorted(fake_backend.seen.values()) == [1] * 30  # the same batch again, not a second execution
    assert out.split("batch ")[1].split()[0] == again[1].split("batch ")[1].split()[0]


async def test_a_batch_that_fails_validation_exits_1_with_its_errors(tmp_path: Path, fake_backend: FakeBackend) -> None:
    config = write_config(tmp_path, fake_backend)
    requests = tmp_path / "bad.jsonl"
    requests.write_bytes(jsonl([chat_line(0)]) + b"{broken\n")
    code, _, err = await llama_batches("run", str(requests), "--config", str(config))
    assert code == 1
    assert "line 2: invalid_json_line" in err and "failed" in err


async def test_an_interrupted_run_resumes_when_run_again(tmp_path: Path, fake_backend: FakeBackend) -> None:
    fake_backend.latency_s = 0.02
    window = 4
    config = write_config(tmp_path, fake_backend, max_concurrent_requests_per_batch=window)
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(jsonl([chat_line(i) for i in range(150)]))
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        str(requests),
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        while fake_backend.succeeded < 30:
            await asyncio.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = await process.communicate()
    assert process.returncode == 130 and "run the same command again to resume" in err.decode()
    before = fake_backend.succeeded
    assert before < 150

    code, out, _ = await llama_batches("run", str(requests), "--config", str(config))
    assert code == 0 and "completed 150" in out
    assert len(fake_backend.seen) == 150
    assert sum(count > 1 for count in fake_backend.seen.values()) <= 2 * window  # only those in flight
    assert fake_backend.succeeded - before < 150  # resumed, not started over


async def test_a_config_error_exits_2_naming_the_path(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("providers:\n  files:\n  - {provider_id: f, provider_type: inline::nope}\n")
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(jsonl([chat_line(0)]))
    code, _, err = await llama_batches("run", str(requests), "--config", str(config))
    assert code == 2
    assert "providers.files[0].provider_type" in err and "inline::localfs" in err


async def test_providers_lists_the_installed_providers() -> None:
    code, out, _ = await llama_batches("providers")
    assert code == 0
    for provider_type in ("inline::reference", "inline::localfs", "remote::openai", "inline::llama-cpp"):
        assert provider_type in out


async def test_chat_and_models_go_through_the_configured_stack(tmp_path: Path, fake_backend: FakeBackend) -> None:
    config = write_config(tmp_path, fake_backend)
    code, out, err = await llama_batches("chat", "hello there", "--config", str(config), "--model", "fake-model")
    assert code == 0, err
    assert "echo: hello there" in out
    code, out, _ = await llama_batches("models", "--config", str(config))
    assert code == 0 and "fake-model" in out


@pytest.mark.model
async def test_the_readme_example_runs_on_the_bundled_model(tmp_path: Path) -> None:
    """The README's first command, on the embedded default config."""
    example = tmp_path / "questions.jsonl"
    shutil.copy(ROOT / "examples" / "questions.jsonl", example)
    code, _, err = await llama_batches("run", str(example), env={"LLAMA_BATCHES_HOME": str(tmp_path / "home")})
    assert code == 0, err
    results = {
        r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"]
        for r in map(json.loads, (tmp_path / "questions.output.jsonl").read_text().splitlines())
    }
    assert len(results) == 12
    assert "Paris" in results["q1"]
