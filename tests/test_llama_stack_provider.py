"""llama-batches inside llama-stack 0.7.3, proved against the real thing.

Each test starts ``llama stack run examples/llama-stack/run.yaml`` (llama-batches as the batches provider,
llama-stack's own files, its remote::openai inference on our fake backend over real HTTP) in the Python 3.12 venv
of :mod:`tests.llama_stack_venv`, and drives it with the openai SDK, as a llama-stack user would.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import openai
import orjson
import pytest
import yaml
from aiohttp import web

from .fake_backend import FakeBackend
from .llama_stack_process import LlamaStackProcess
from .llama_stack_venv import REPO

EXAMPLE = REPO / "examples" / "llama-stack" / "run.yaml"
MODEL = "openai/fake-model"  # llama-stack 0.7 names a provider's models <provider_id>/<model>
TERMINAL = {"completed", "failed", "cancelled", "expired"}


def _lines(n: int, tag: str) -> bytes:
    return b"\n".join(
        orjson.dumps(
            {
                "custom_id": f"{tag}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": MODEL, "messages": [{"role": "user", "content": f"{tag} question {i}"}]},
            }
        )
        for i in range(n)
    )


def _config(tmp_path: Path, **batches: Any) -> Path:
    """The example run config, with extra fields for the batches provider's config."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["providers"]["batches"][0]["config"].update(batches)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env(tmp_path: Path, backend: FakeBackend) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": backend.base_url,
        "INFERENCE_MODEL": "fake-model",
        "SQLITE_STORE_DIR": str(tmp_path / "state"),
        "FILES_STORAGE_DIR": str(tmp_path / "files"),
    }


async def _until(client: openai.AsyncOpenAI, batch_id: str, done: set[str], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in done:
            return batch
        assert time.monotonic() < deadline, f"{batch_id} still {batch.status} after {timeout} s"
        await asyncio.sleep(0.1)


async def _custom_ids(client: openai.AsyncOpenAI, file_id: str | None) -> list[str]:
    if file_id is None:
        return []
    content = await client.files.content(file_id)
    return [orjson.loads(line)["custom_id"] for line in content.text.splitlines() if line]


async def _completed(client: openai.AsyncOpenAI, batch_id: str) -> int:
    counts = (await client.batches.retrieve(batch_id)).request_counts
    return counts.completed if counts is not None else 0


ClientFor = Callable[[LlamaStackProcess], openai.AsyncOpenAI]


@pytest.fixture
async def client_for() -> AsyncIterator[ClientFor]:
    clients: list[openai.AsyncOpenAI] = []

    def make(server: LlamaStackProcess) -> openai.AsyncOpenAI:
        clients.append(openai.AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def test_create_replay_conflict_cancel_and_output_through_llama_stack(
    llama_stack_bin: Path, tmp_path: Path, client_for: ClientFor
) -> None:
    async with FakeBackend() as backend:
        server = LlamaStackProcess(llama_stack_bin, EXAMPLE, tmp_path / "llama-stack.log", _env(tmp_path, backend))
        async with server:
            client = client_for(server)
            upload = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(25, "a"))), purpose="batch")
            params: dict[str, Any] = {
                "input_file_id": upload.id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"team": "x", "run": "1"},
            }
            first = await client.batches.create(**params, extra_body={"idempotency_key": "nightly-1"})
            again = await client.batches.create(
                **{**params, "metadata": {"run": "1", "team": "x"}}, extra_body={"idempotency_key": "nightly-1"}
            )
            assert again.id == first.id  # metadata key order does not matter
            with pytest.raises(openai.ConflictError) as conflict:
                await client.batches.create(
                    **{**params, "metadata": {"run": "2"}}, extra_body={"idempotency_key": "nightly-1"}
                )
            assert "nightly-1" in str(conflict.value) and first.id in str(conflict.value)

            done = await _until(client, first.id, TERMINAL)
            assert done.status == "completed", done
            assert done.request_counts is not None and done.request_counts.completed == 25
            ids = await _custom_ids(client, done.output_file_id)
            assert sorted(ids) == sorted(f"a-{i}" for i in range(25))
            assert done.error_file_id is None
            assert backend.succeeded == 25  # the replay ran nothing twice

            with pytest.raises(openai.NotFoundError):
                await client.batches.retrieve("batch_does_not_exist")
            with pytest.raises(openai.BadRequestError) as bad:  # llama-stack sends the message only: code in it
                await client.batches.create(**{**params, "endpoint": "/v1/invalid/endpoint"})
            assert "invalid_value" in str(bad.value) and "endpoint" in str(bad.value)
            missing = await client.batches.create(**{**params, "input_file_id": "file-nonexistent-xyz"})
            gone = await _until(client, missing.id, TERMINAL, timeout=10)  # at once: no retry of a missing file
            assert gone.status == "failed" and gone.errors is not None and gone.errors.data
            assert gone.errors.data[0].code == "invalid_request"
            assert "cannot find file" in (gone.errors.data[0].message or "").lower()
            listed = await client.batches.list(limit=10)
            assert [b.id for b in listed.data] == [missing.id, first.id]

            backend.latency_s = 0.5
            slow = await client.files.create(file=("slow.jsonl", io.BytesIO(_lines(200, "c"))), purpose="batch")
            running = await client.batches.create(
                input_file_id=slow.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            await _until(client, running.id, {"in_progress"})
            cancelling = await client.batches.cancel(running.id)
            assert cancelling.status in ("cancelling", "cancelled")
            cancelled = await _until(client, running.id, TERMINAL, timeout=30)
            assert cancelled.status == "cancelled"
            done_ids = await _custom_ids(client, cancelled.output_file_id)
            assert len(done_ids) == len(set(done_ids)) < 200
            with pytest.raises(openai.ConflictError):
                await client.batches.cancel(first.id)  # a completed batch cannot be cancelled


async def test_a_batch_resumes_after_llama_stack_is_killed(
    llama_stack_bin: Path, tmp_path: Path, client_for: ClientFor
) -> None:
    config = _config(tmp_path, lease_ttl_s=2.0, max_concurrent_requests_per_batch=4)
    async with FakeBackend(latency_s=0.2, fail_rate=0.2, seed=1) as backend:  # and a fifth of answers 500 or 429
        env = _env(tmp_path, backend)
        first = LlamaStackProcess(llama_stack_bin, config, tmp_path / "first.log", env)
        await first.start()
        try:
            client = client_for(first)
            upload = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(60, "k"))), purpose="batch")
            batch = await client.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                extra_body={"idempotency_key": "resume-me"},
            )
            deadline = time.monotonic() + 60
            while await _completed(client, batch.id) < 12:
                assert time.monotonic() < deadline, "the batch made no progress"
                await asyncio.sleep(0.05)
        finally:
            await first.kill()
        answered_before = backend.succeeded
        assert answered_before < 60

        async with LlamaStackProcess(llama_stack_bin, config, tmp_path / "second.log", env) as second:
            client = client_for(second)
            replay = await client.batches.create(
                input_file_id=upload.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                extra_body={"idempotency_key": "resume-me"},
            )
            assert replay.id == batch.id
            done = await _until(client, batch.id, TERMINAL, timeout=90)
            assert done.status == "completed", done
            ids = await _custom_ids(client, done.output_file_id)
            assert sorted(ids) == sorted(f"k-{i}" for i in range(60))  # every custom_id exactly once
            assert 60 <= backend.succeeded <= 60 + 4  # at most the requests in flight at the kill ran twice
            assert backend.injected_failures > 0 and done.error_file_id is None  # every fault was retried away


class _AuthService:
    """llama-stack's ``custom`` authentication endpoint: a token names a principal (with a role), else a 401."""

    PRINCIPALS: ClassVar[dict[str, str]] = {"alice-token-0123456789": "alice", "bob-token-0123456789": "bob"}

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _check(self, request: web.Request) -> web.Response:
        principal = self.PRINCIPALS.get((await request.json()).get("api_key", ""))
        if principal is None:
            return web.json_response({"error": "unknown token"}, status=401)
        return web.json_response({"principal": principal, "attributes": {"roles": [f"{principal}-role"]}})

    async def __aenter__(self) -> _AuthService:
        app = web.Application()
        app.router.add_post("/authenticate", self._check)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/authenticate"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_each_llama_stack_user_sees_only_their_batches_and_theirs_run_as_them(
    llama_stack_bin: Path, tmp_path: Path
) -> None:
    async with FakeBackend() as backend, _AuthService() as auth:
        config = yaml.safe_load(EXAMPLE.read_text())
        config["server"]["auth"] = {"provider_config": {"type": "custom", "endpoint": auth.url}}
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        async with LlamaStackProcess(llama_stack_bin, path, tmp_path / "ls.log", _env(tmp_path, backend)) as server:
            alice, bob, nobody = (
                openai.AsyncOpenAI(base_url=server.base_url, api_key=key, max_retries=0)
                for key in ("alice-token-0123456789", "bob-token-0123456789", "wrong-token-0123456789")
            )
            try:
                upload = await alice.files.create(file=("in.jsonl", io.BytesIO(_lines(5, "al"))), purpose="batch")
                batch = await alice.batches.create(
                    input_file_id=upload.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    extra_body={"idempotency_key": "shared-key"},
                )
                with pytest.raises(openai.AuthenticationError):
                    await nobody.batches.list()
                done = await _until(alice, batch.id, TERMINAL)
                assert done.status == "completed", done  # the engine read alice's file and wrote hers, as alice
                assert sorted(await _custom_ids(alice, done.output_file_id)) == [f"al-{i}" for i in range(5)]
                with pytest.raises(openai.NotFoundError):
                    await bob.batches.retrieve(batch.id)
                with pytest.raises(openai.NotFoundError):
                    await bob.batches.cancel(batch.id)
                assert (await bob.batches.list()).data == []
                with pytest.raises(openai.NotFoundError):  # llama-stack's files keep alice's output to her
                    await bob.files.content(done.output_file_id or "")
                bobs = await bob.batches.create(  # bob's own file, alice's key: his own batch
                    input_file_id=(
                        await bob.files.create(file=("b.jsonl", io.BytesIO(_lines(2, "bo"))), purpose="batch")
                    ).id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    extra_body={"idempotency_key": "shared-key"},
                )
                assert bobs.id != batch.id
            finally:
                for client in (alice, bob, nobody):
                    await client.close()


@pytest.fixture
def postgres_db(request: pytest.FixtureRequest) -> dict[str, Any]:
    postgres: dict[str, Any] = request.getfixturevalue("postgres")
    return postgres


@pytest.mark.postgres
async def test_two_llama_stack_servers_on_postgres_make_one_batch_from_64_racing_creates(
    llama_stack_bin: Path, tmp_path: Path, postgres_db: dict[str, Any]
) -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    db = {k: postgres_db[k] for k in ("host", "port", "db", "user")}
    config["storage"]["backends"] = {
        "kv_default": {"type": "kv_postgres", **db, "password": postgres_db["password"] or ""},
        "sql_default": {"type": "sql_postgres", **db, "password": postgres_db["password"] or ""},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    async with FakeBackend(latency_s=0.05) as backend:
        env = _env(tmp_path, backend)  # one files directory, as two servers on one machine (or a shared volume)
        one = LlamaStackProcess(llama_stack_bin, path, tmp_path / "one.log", env)
        two = LlamaStackProcess(llama_stack_bin, path, tmp_path / "two.log", env)
        async with one, two:
            clients = [openai.AsyncOpenAI(base_url=s.base_url, api_key="none", max_retries=0) for s in (one, two)]
            try:
                upload = await clients[0].files.create(file=("in.jsonl", io.BytesIO(_lines(40, "p"))), purpose="batch")
                creates = [
                    clients[i % 2].batches.create(
                        input_file_id=upload.id,
                        endpoint="/v1/chat/completions",
                        completion_window="24h",
                        extra_body={"idempotency_key": "racing"},
                    )
                    for i in range(64)
                ]
                batches = await asyncio.gather(*creates)
                assert len({b.id for b in batches}) == 1
                done = await _until(clients[1], batches[0].id, TERMINAL, timeout=90)
                assert done.status == "completed", done
                assert sorted(await _custom_ids(clients[0], done.output_file_id)) == sorted(f"p-{i}" for i in range(40))
                assert backend.succeeded == 40  # one execution
            finally:
                for client in clients:
                    await client.close()


def test_the_adapter_is_typed_against_llama_stack_api(llama_stack_bin: Path) -> None:
    """mypy --strict on the adapter package, with llama-stack-api installed (it is not, in the 3.11 venv)."""
    python = str(llama_stack_bin / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "mypy>=1.11"], check=True, timeout=600)
    done = subprocess.run(
        [
            python,
            "-m",
            "mypy",
            "--strict",
            "--follow-untyped-imports",
            "--follow-imports=silent",
            "-p",
            "llama_batches_llama_stack",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
