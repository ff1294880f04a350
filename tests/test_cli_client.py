"""``llama-batches batches ...`` and ``files ...`` as real processes against a real server (one for the module)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio

from .conformance.batches import CHAT, chat_line, jsonl
from .fake_backend import FakeBackend
from .server_process import ServerProcess, free_port
from .test_provider_reference import reference_config

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Served:
    server: ServerProcess
    backend: FakeBackend
    client: openai.AsyncOpenAI

    async def cli(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Run ``llama-batches ARGS`` against the server; its exit code, stdout and stderr."""
        environment = {**os.environ, "LLAMA_BATCHES_BASE_URL": self.server.base_url, "COLUMNS": "200", **(env or {})}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llama_batches.cli",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        code, out, err = await self.cli(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    async def completed_batch(self, requests: int = 3) -> str:
        """A batch created with the SDK and run to completion."""
        file = await self.client.files.create(
            file=("in.jsonl", jsonl([chat_line(i) for i in range(requests)])), purpose="batch"
        )
        batch = await self.client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        async with asyncio.timeout(20):
            while batch.status != "completed":
                await asyncio.sleep(0.05)
                batch = await self.client.batches.retrieve(batch.id)
        return batch.id


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    directory = tmp_path_factory.mktemp("server")
    async with (
        FakeBackend() as backend,
        ServerProcess(reference_config(directory, backend), directory) as server,
        openai.AsyncOpenAI(base_url=server.base_url, api_key="none") as client,
    ):
        yield Served(server, backend, client)


async def test_upload_create_wait_download(served: Served, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(jsonl([chat_line(i, content=f"cli {i}") for i in range(12)]))
    uploaded = await served.json("files", "upload", str(requests))
    assert uploaded["object"] == "file" and uploaded["purpose"] == "batch" and uploaded["filename"] == "requests.jsonl"

    create = ["batches", "create", "--input-file-id", uploaded["id"], "--endpoint", CHAT, "--metadata", "team=cli"]
    first = await served.json(*create, "--metadata", "run=1", "--idempotency-key", "cli-key-1")
    again = await served.json(*create, "--metadata", "run=1", "--idempotency-key", "cli-key-1")
    assert first["id"] == again["id"] and first["object"] == "batch"
    assert first["metadata"] == {"team": "cli", "run": "1"} and first["endpoint"] == CHAT
    code, out, _ = await served.cli(*create, "--metadata", "run=1", "--idempotency-key", "cli-key-1")
    assert code == 0 and first["id"] in out and "an existing batch" in out
    code, _, err = await served.cli(*create, "--idempotency-key", "cli-key-1")  # other parameters, same key
    assert code == 2 and err.startswith("error: 409 ") and "cli-key-1" in err

    code, out, err = await served.cli("batches", "wait", first["id"], "--interval", "0.1")
    assert code == 0, err
    assert "completed" in out and "12/12" in out and "failed 0" in out
    done = await served.json("batches", "wait", first["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"completed": 12, "failed": 0, "total": 12}

    target = tmp_path / "out.jsonl"
    code, out, err = await served.cli("files", "download", done["output_file_id"], "-o", str(target))
    assert code == 0, err
    results = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(12))
    assert f"{target.stat().st_size:,} bytes" in out and not target.with_name("out.jsonl.part").exists()
    code, out, _ = await served.cli("files", "download", done["output_file_id"])
    assert code == 0 and out.encode() == target.read_bytes()


async def test_batches_get_list_and_cancel(served: Served) -> None:
    older, newer = await served.completed_batch(), await served.completed_batch()
    shown, as_json, first_page, second_page, everything, table = await asyncio.gather(
        served.cli("batches", "get", newer),
        served.json("batches", "get", newer),
        served.json("batches", "list", "--limit", "1"),
        served.json("batches", "list", "--limit", "1", "--after", newer),
        served.json("batches", "list", "--limit", "1", "--all"),
        served.cli("batches", "list", "--limit", "1"),
    )
    assert shown[0] == 0 and newer in shown[1] and "completed" in shown[1]
    assert "3 completed, 0 failed, 3 total" in shown[1]
    assert as_json["id"] == newer and as_json["request_counts"]["total"] == 3
    assert [b["id"] for b in first_page["data"]] == [newer] and first_page["has_more"] is True
    assert [b["id"] for b in second_page["data"]] == [older]
    ids = [b["id"] for b in everything["data"]]
    assert ids[:2] == [newer, older] and len(ids) == len(set(ids)) and everything["has_more"] is False
    assert table[0] == 0 and newer in table[1] and f"--after {newer}" in table[1]

    code, out, err = await served.cli("batches", "cancel", newer)
    assert code == 2 and out == ""
    assert err.strip() == "error: 409 Cannot cancel a batch with status 'completed'."
    code, _, err = await served.cli("batches", "get", "batch_nope")
    assert code == 2 and err.startswith("error: 404 ")


async def test_cancel_a_running_batch_and_wait_exits_1(served: Served, tmp_path: Path) -> None:
    served.backend.latency_s = 0.5
    try:
        file = await served.client.files.create(
            file=("slow.jsonl", jsonl([chat_line(i) for i in range(100)])), purpose="batch"
        )
        batch = await served.client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        cancelled = await served.json("batches", "cancel", batch.id)
        assert cancelled["id"] == batch.id and cancelled["status"] in {"cancelling", "cancelled"}
        code, out, err = await served.cli("batches", "wait", batch.id, "--interval", "0.1")
    finally:
        served.backend.latency_s = 0.0
    assert code == 1 and "cancelled" in out and f"batch {batch.id} ended cancelled" in err


async def test_files_list_get_delete(served: Served, tmp_path: Path) -> None:
    file = await served.client.files.create(file=("listed.jsonl", jsonl([chat_line(0)])), purpose="batch")
    listed, table, shown, as_json = await asyncio.gather(
        served.json("files", "list", "--purpose", "batch", "--limit", "1000", "--order", "asc"),
        served.cli("files", "list"),
        served.cli("files", "get", file.id),
        served.json("files", "get", file.id),
    )
    assert listed["object"] == "list" and file.id in [f["id"] for f in listed["data"]]
    assert {f["purpose"] for f in listed["data"]} == {"batch"}
    assert table[0] == 0 and file.id in table[1] and "listed.jsonl" in table[1]
    assert shown[0] == 0 and file.id in shown[1] and "listed.jsonl" in shown[1] and "batch" in shown[1]
    assert as_json["bytes"] == file.bytes and as_json["filename"] == "listed.jsonl"

    code, out, _ = await served.cli("files", "delete", file.id)
    assert code == 0 and f"deleted {file.id}" in out
    code, out, err = await served.cli("files", "get", file.id)
    assert code == 2 and out == "" and err.startswith("error: 404 ")
    target = tmp_path / "gone.jsonl"
    code, _, err = await served.cli("files", "download", file.id, "-o", str(target))
    assert code == 2 and err.startswith("error: 404 ")
    assert not target.exists() and not target.with_name("gone.jsonl.part").exists()


async def test_bad_input_is_a_clear_error(served: Served, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{not json\n{"custom_id": "a"}\n')  # the upload checks the first line, as OpenAI's does
    code, _, err = await served.cli("files", "upload", str(broken))
    assert code == 2 and err.startswith("error: 400 ")
    args = ["batches", "create", "--input-file-id", "file-x", "--endpoint", CHAT, "--metadata", "novalue"]
    code, _, err = await served.cli(*args)
    assert code == 2 and "KEY=VALUE" in err


async def test_an_unreachable_server_is_named_and_exits_2(served: Served) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    (code, out, err), (env_code, _, env_err) = await asyncio.gather(
        served.cli("batches", "--base-url", url, "list"),
        served.cli("files", "list", env={"LLAMA_BATCHES_BASE_URL": url}),
    )
    assert code == 2 and out == ""
    assert err.startswith(f"error: cannot reach the llama-batches server at {url}")
    assert env_code == 2 and url in env_err
