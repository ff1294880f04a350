"""remote::passthrough against a second llama-batches server (reference engine + fake backend) run as a real
subprocess: the batches and files conformance suites, and idempotency the remote itself is not asked for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import ClientSession, FormData, web

from llama_batches import build_stack
from llama_batches.api import ExpiresAfter, FilePurpose
from llama_batches.api.files import LateExpiresAfter, late_expiry_files
from llama_batches.errors import InvalidRequestError, ServiceUnavailableError, UpstreamTimeoutError

from .conformance.batches import CHAT, BatchesEnv, chat_line, jsonl
from .fake_backend import FakeBackend
from .server_process import ServerProcess, free_port
from .test_provider_reference import reference_config


def front_config(directory: Path, remote_url: str, **batches: Any) -> dict[str, Any]:
    """A stack whose batches and files are the remote's, with its ledger and ownership in SQLite."""
    remote = {"base_url": remote_url, "api_key": "front-key", "timeout_s": 10.0}
    return {
        "version": 2,
        "apis": ["batches", "files"],
        "providers": {
            "batches": [
                {
                    "provider_id": "remote",
                    "provider_type": "remote::passthrough",
                    "config": {**remote, "ledger": {"backend": "kv_default", "namespace": "front"}, **batches},
                }
            ],
            "files": [
                {
                    "provider_id": "remote-files",
                    "provider_type": "remote::passthrough",
                    "config": {**remote, "ownership": {"backend": "kv_default", "namespace": "front"}},
                }
            ],
        },
        "storage": {"backends": {"kv_default": {"type": "kv_sqlite", "db_path": str(directory / "front.db")}}},
    }


@pytest.fixture
async def remote(tmp_path: Path, fake_backend: FakeBackend) -> AsyncIterator[ServerProcess]:
    """The remote: a llama-batches server with the reference engine on the fake backend."""
    directory = tmp_path / "remote"
    directory.mkdir()
    async with ServerProcess(reference_config(directory, fake_backend), directory) as server:
        yield server


@pytest.fixture
async def env(tmp_path: Path, remote: ServerProcess, fake_backend: FakeBackend) -> AsyncIterator[BatchesEnv]:
    async with build_stack(front_config(tmp_path, remote.base_url)) as stack:
        yield BatchesEnv(stack.batches, stack.files, fake_backend)


async def remote_batch_ids(remote: ServerProcess) -> list[str]:
    """Every batch on the remote (asked directly, not through the front)."""
    async with openai.AsyncOpenAI(base_url=remote.base_url, api_key="direct") as client:
        return [batch.id async for batch in client.batches.list(limit=100)]


async def test_64_concurrent_creates_on_the_front_make_one_remote_batch(
    tmp_path: Path, remote: ServerProcess, fake_backend: FakeBackend
) -> None:
    front_dir = tmp_path / "front"
    front_dir.mkdir()
    front = ServerProcess(front_config(front_dir, remote.base_url), front_dir)
    async with front, openai.AsyncOpenAI(base_url=front.base_url, api_key="unused") as client:
        uploaded = await client.files.create(
            file=("in.jsonl", jsonl([chat_line(i) for i in range(10)])), purpose="batch"
        )
        created = await asyncio.gather(
            *(
                client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    metadata={"run": "race"},
                    extra_headers={"Idempotency-Key": "race"},
                )
                for _ in range(64)
            )
        )
        assert len({b.id for b in created}) == 1
        assert {tuple((b.metadata or {}).items()) for b in created} == {(("run", "race"),)}  # no marker shown
        async with asyncio.timeout(30):
            while (batch := await client.batches.retrieve(created[0].id)).status != "completed":
                await asyncio.sleep(0.05)
        output = (await client.files.content(batch.output_file_id or "")).text
        with pytest.raises(openai.ConflictError) as conflict:
            await client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"run": "other"},
                extra_headers={"Idempotency-Key": "race"},
            )
    assert conflict.value.response.headers.get("x-should-retry") == "false"
    assert await remote_batch_ids(remote) == [created[0].id]
    assert len(output.splitlines()) == 10 and sorted(fake_backend.seen.values()) == [1] * 10


async def test_a_remote_that_is_down_is_a_503_and_nothing_is_recorded(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = front_config(tmp_path, dead, lost_create_grace_s=0.0, timeout_s=2.0)
    async with build_stack(config) as stack:
        with pytest.raises(ServiceUnavailableError):
            await stack.files.openai_upload_file(_one(b'{"a": 1}\n'), FilePurpose.batch, "in.jsonl")
    batches_only = {**config, "apis": ["batches"], "providers": {"batches": config["providers"]["batches"]}}
    async with build_stack(batches_only) as stack:  # no files provider: input files are the remote's business
        with pytest.raises(ServiceUnavailableError) as info:
            await stack.batches.create_batch("file-x", CHAT, "24h", idempotency_key="k")
        assert info.value.status == 503 and "cannot be reached" in info.value.message
        assert (await stack.batches.list_batches()).data == []


async def test_another_principals_input_file_cannot_be_used(env: BatchesEnv) -> None:
    from llama_batches.errors import NotFoundError
    from llama_batches.principal import acting_as

    with acting_as("alice"):
        alices = await env.upload([chat_line(0)])
    with acting_as("bob"), pytest.raises(NotFoundError) as info:
        await env.create(alices)
    assert info.value.param == "input_file_id"
    assert env.backend.seen == {}


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


class SlowProxy:
    """An HTTP proxy to the remote that holds each batch create for ``delay_s`` (the remote still gets it) and
    strips the Idempotency-Key header, as a remote without idempotency would ignore it."""

    def __init__(self, target: str, delay_s: float) -> None:
        self.target = target.removesuffix("/v1")
        self.delay_s = delay_s
        self.creates_forwarded = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        dropped = ("host", "idempotency-key", "transfer-encoding", "content-length")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
        if request.method == "POST" and request.path == "/v1/batches":
            await asyncio.sleep(self.delay_s)
            self.creates_forwarded += 1
        url = self.target + request.path_qs
        async with self._session.request(request.method, url, data=body, headers=headers) as answer:
            payload = await answer.read()
            return web.Response(body=payload, status=answer.status, content_type=answer.content_type)

    async def __aenter__(self) -> SlowProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._session = ClientSession()
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None and self._session is not None
        await self._runner.cleanup()
        await self._session.close()


async def test_a_create_that_timed_out_is_found_again_not_made_twice(tmp_path: Path, remote: ServerProcess) -> None:
    async with SlowProxy(remote.base_url, delay_s=1.0) as proxy:
        config = front_config(tmp_path, f"http://127.0.0.1:{proxy.port}/v1", lost_create_grace_s=2.0)
        config["providers"]["batches"][0]["config"]["timeout_s"] = 0.5
        async with build_stack(config) as stack:
            uploaded = await stack.files.openai_upload_file(_one(jsonl([chat_line(0)])), FilePurpose.batch, "in.jsonl")
            with pytest.raises(UpstreamTimeoutError):
                await stack.batches.create_batch(uploaded.id, CHAT, "24h", idempotency_key="slow")
            retried = await stack.batches.create_batch(uploaded.id, CHAT, "24h", idempotency_key="slow")
            again = await stack.batches.create_batch(uploaded.id, CHAT, "24h", idempotency_key="slow")
    assert proxy.creates_forwarded == 1  # the retry found the first create on the remote instead of making another
    assert retried.id == again.id
    assert await remote_batch_ids(remote) == [retried.id]


async def _post_form(base_url: str, parts: list[tuple[str, Any, str | None]]) -> tuple[int, Any]:
    """POST /v1/files with the form ``parts`` (name, value, filename) in exactly this order."""
    form = FormData()
    for name, value, filename in parts:
        form.add_field(name, value, **({} if filename is None else {"filename": filename}))
    async with ClientSession() as session, session.post(f"{base_url}/files", data=form) as answer:
        return answer.status, await answer.json()


EXPIRY_AFTER_FILE: dict[str, list[tuple[str, Any, str | None]]] = {
    "file-between": [
        ("purpose", "user_data", None),
        ("file", b"late expiry", "late.txt"),
        ("expires_after[anchor]", "created_at", None),
        ("expires_after[seconds]", "7200", None),
    ],
    "split": [
        ("purpose", "user_data", None),
        ("expires_after[seconds]", "7200", None),
        ("file", b"late expiry", "late.txt"),
        ("expires_after[anchor]", "created_at", None),
    ],
}


@pytest.mark.parametrize("order", EXPIRY_AFTER_FILE)
async def test_an_expiry_after_the_file_part_reaches_the_remote_in_the_same_upload(
    tmp_path: Path, remote: ServerProcess, order: str
) -> None:
    """The front streams the file to the remote and sends the expiry fields after it, once read: one remote file,
    with its expiry; a bad late field is the front's 400, and the remote keeps nothing."""
    front_dir = tmp_path / "front"
    front_dir.mkdir()
    front = ServerProcess(front_config(front_dir, remote.base_url), front_dir)
    async with front, openai.AsyncOpenAI(base_url=remote.base_url, api_key="direct") as direct:
        before = [f.id async for f in direct.files.list()]
        status, body = await _post_form(front.base_url, EXPIRY_AFTER_FILE[order])
        on_remote = await direct.files.retrieve(body["id"])
        bad = [(n, "3599" if n == "expires_after[seconds]" else v, f) for n, v, f in EXPIRY_AFTER_FILE[order]]
        bad_status, bad_body = await _post_form(front.base_url, bad)
        after = [f.id async for f in direct.files.list()]
        no_expiry = [p for p in EXPIRY_AFTER_FILE[order] if not p[0].startswith("expires_after")]
        plain_status, plain = await _post_form(front.base_url, no_expiry)
    assert status == 200, body
    assert body["expires_at"] == body["created_at"] + 7200 and on_remote.expires_at == body["expires_at"]
    assert [i for i in after if i not in before] == [body["id"]]
    assert bad_status == 400 and bad_body["error"]["param"] == "expires_after.seconds", bad_body
    assert plain_status == 200 and plain["expires_at"] == plain["created_at"] + 365 * 24 * 3600


async def test_a_late_expiry_is_sent_after_the_content_and_a_content_error_is_its_own(
    env: BatchesEnv, remote: ServerProcess
) -> None:
    """A :class:`LateExpiresAfter` is read once the content has been streamed (it is set only then here), and an
    error the content raises at its end is the upload's error, not a 503, the remote keeping nothing."""
    late, files = LateExpiresAfter(), late_expiry_files(env.files)
    assert files is not None  # remote::passthrough takes a late expiry

    async def content(at_end: Callable[[], None]) -> AsyncIterator[bytes]:
        yield b"late expiry, "
        yield b"streamed"
        at_end()

    def refuse() -> None:
        raise InvalidRequestError("a bad field after the file", param="expires_after.seconds")

    created = await files.openai_upload_file(
        content(lambda: late.set(ExpiresAfter(seconds=7200))), FilePurpose.user_data, "late.txt", late
    )
    async with openai.AsyncOpenAI(base_url=remote.base_url, api_key="direct") as direct:
        on_remote = await direct.files.retrieve(created.id)
        before = [f.id async for f in direct.files.list()]
        with pytest.raises(InvalidRequestError) as info:
            await files.openai_upload_file(content(refuse), FilePurpose.user_data, "bad.txt", LateExpiresAfter())
        after = [f.id async for f in direct.files.list()]
    assert created.expires_at == created.created_at + 7200 and on_remote.expires_at == created.expires_at
    assert info.value.param == "expires_after.seconds" and after == before
