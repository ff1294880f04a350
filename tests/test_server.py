"""``llama-batches serve`` as a real subprocess, driven by the real openai SDK (sync and async): the batch lifecycle
on every endpoint, idempotent creation, 409s without retries, OpenAI-shaped 404s and 400s, list pagination, and
input files that fail validation.

One server (and one fake backend) serves the whole module; tests that count things look only at their own
batches or requests.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

import aiohttp
import httpx2
import openai
import pytest
import pytest_asyncio
from openai.types import Batch

from .conformance.batches import chat_line, jsonl
from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

T = TypeVar("T")
TERMINAL = {"completed", "failed", "expired", "cancelled"}
ERROR_KEYS = {"message", "type", "param", "code"}
Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
CHAT: Final = "/v1/chat/completions"
COMPLETIONS: Final = "/v1/completions"
EMBEDDINGS: Final = "/v1/embeddings"


# helpers (also used by test_server_files and test_server_schema) -----------------------------------------------


@dataclass
class Live:
    """A running server, the fake backend behind it and the directory holding its config, files and database."""

    server: ServerProcess
    backend: FakeBackend
    directory: Path

    @property
    def base_url(self) -> str:
        return self.server.base_url


@dataclass
class RequestLog:
    """Every HTTP request an SDK client sends (retries included), as ``(method, path)``."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    def hook(self, request: httpx2.Request) -> None:
        self.sent.append((request.method, request.url.path))

    async def ahook(self, request: httpx2.Request) -> None:
        self.hook(request)

    def count(self, method: str, path: str) -> int:
        return self.sent.count((method, path))


@contextmanager
def sync_client(base_url: str, log: RequestLog | None = None) -> Iterator[openai.OpenAI]:
    """``openai.OpenAI`` on the server (default retries kept), its requests recorded in ``log``."""
    hooks = {"request": [log.hook]} if log is not None else {}
    with openai.OpenAI(
        base_url=base_url, api_key="unused", http_client=openai.DefaultHttpxClient(event_hooks=hooks)
    ) as client:
        yield client


def async_client(base_url: str, log: RequestLog | None = None) -> openai.AsyncOpenAI:
    """``openai.AsyncOpenAI`` on the server (use it with ``async with``), its requests recorded in ``log``."""
    hooks = {"request": [log.ahook]} if log is not None else {}
    return openai.AsyncOpenAI(
        base_url=base_url, api_key="unused", http_client=openai.DefaultAsyncHttpxClient(event_hooks=hooks)
    )


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call the sync SDK off the event loop, so the in-process fake backend keeps serving."""
    return await asyncio.to_thread(function, *args, **kwargs)


async def wait_batch(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 30.0) -> Batch:
    """Poll ``retrieve`` until the batch reaches a terminal status."""
    async with asyncio.timeout(timeout):
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in TERMINAL:
                return batch
            await asyncio.sleep(0.05)


def assert_openai_error(body: Any, *, param: str | None = None, check_param: bool = False) -> dict[str, Any]:
    """``body`` is exactly ``{"error": {"message", "type", "param", "code"}}`` with no stack trace; the inner dict."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    text = json.dumps(body)
    assert "Traceback" not in text and 'File "' not in text, text
    if check_param or param is not None:
        assert error["param"] == param, error
    return cast("dict[str, Any]", error)


def sdk_error(exc: openai.APIStatusError, *, param: str | None = None, check_param: bool = False) -> dict[str, Any]:
    """The OpenAI-shaped body of the response behind an SDK error."""
    return assert_openai_error(exc.response.json(), param=param, check_param=check_param)


async def raw(live: Live, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    """One request with aiohttp (no SDK): status, headers, JSON body (or text)."""
    async with aiohttp.ClientSession() as session, session.request(method, live.base_url + path, **kwargs) as answer:
        text = await answer.text()
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return answer.status, dict(answer.headers), body


def line_for(endpoint: str, i: int, tag: str) -> dict[str, Any]:
    """One input line for ``endpoint``; the fake backend counts it under ``f"{tag} {i}"``."""
    text = f"{tag} {i}"
    if endpoint == CHAT:
        return chat_line(i, content=text)
    if endpoint == COMPLETIONS:
        body: dict[str, Any] = {"model": "fake-model", "prompt": text}
    else:
        body = {"model": "fake-embed", "input": text}
    return {"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": body}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    directory = tmp_path_factory.mktemp("server")
    async with FakeBackend() as backend, ServerProcess(reference_config(directory, backend), directory) as server:
        yield Live(server, backend, directory)


async def upload_batch_file(client: openai.AsyncOpenAI, lines: list[dict[str, Any]] | bytes) -> str:
    content = lines if isinstance(lines, bytes) else jsonl(lines)
    return (await client.files.create(file=("input.jsonl", content), purpose="batch")).id


# 1. lifecycle -------------------------------------------------------------------------------------------------


EXPECTED_OBJECT = {CHAT: "chat.completion", COMPLETIONS: "text_completion", EMBEDDINGS: "list"}


@pytest.mark.parametrize(
    ("endpoint", "flavor"),
    [(CHAT, "sync"), (COMPLETIONS, "async"), (EMBEDDINGS, "sync"), (CHAT, "async")],
)
async def test_a_batch_runs_to_completed_through_the_sdk(live: Live, endpoint: Endpoint, flavor: str) -> None:
    tag = f"lifecycle {endpoint} {flavor}"
    lines = [line_for(endpoint, i, tag) for i in range(4)]
    async with async_client(live.base_url) as aclient:
        if flavor == "sync":
            with sync_client(live.base_url) as client:
                uploaded = await in_thread(client.files.create, file=("input.jsonl", jsonl(lines)), purpose="batch")
                created = await in_thread(
                    client.batches.create,
                    input_file_id=uploaded.id,
                    endpoint=endpoint,
                    completion_window="24h",
                    metadata={"flavor": flavor},
                )
                done = await wait_batch(aclient, created.id)
                assert done.output_file_id is not None
                output = (await in_thread(client.files.content, done.output_file_id)).content
        else:
            uploaded = await aclient.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
            created = await aclient.batches.create(
                input_file_id=uploaded.id,
                endpoint=endpoint,
                completion_window="24h",
                metadata={"flavor": flavor},
            )
            done = await wait_batch(aclient, created.id)
            assert done.output_file_id is not None
            output = (await aclient.files.content(done.output_file_id)).content

    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    assert created.object == "batch" and created.status == "validating" and created.endpoint == endpoint
    assert created.input_file_id == uploaded.id and created.metadata == {"flavor": flavor}
    assert done.status == "completed", done.errors
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (4, 4, 0)
    assert done.error_file_id is None and done.completed_at is not None
    results = [json.loads(line) for line in output.splitlines()]
    assert sorted(r["custom_id"] for r in results) == [f"req-{i}" for i in range(4)]
    for result in results:
        assert result["error"] is None
        assert result["response"]["status_code"] == 200
        assert result["response"]["body"]["object"] == EXPECTED_OBJECT[endpoint]
    if endpoint == CHAT:
        answers = {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in results}
        assert answers == {f"req-{i}": f"echo: {tag} {i}" for i in range(4)}
    assert all(live.backend.answered.get(f"{tag} {i}") == 1 for i in range(4))


# 2. idempotent create -----------------------------------------------------------------------------------------


async def test_idempotent_create_by_body_key_and_both_header_forms(live: Live) -> None:
    key = "idem-body-and-header-1"
    async with async_client(live.base_url) as client:
        file_id = await upload_batch_file(client, [line_for(CHAT, 0, "idem")])
        params: dict[str, Any] = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
        first = await client.batches.with_raw_response.create(**params, extra_body={"idempotency_key": key})
        by_body = await client.batches.with_raw_response.create(**params, extra_body={"idempotency_key": key})
        quoted = await client.batches.with_raw_response.create(**params, extra_headers={"Idempotency-Key": f'"{key}"'})
        bare = await client.batches.with_raw_response.create(**params, extra_headers={"Idempotency-Key": key})
        both = await client.batches.with_raw_response.create(
            **params, extra_headers={"Idempotency-Key": f'"{key}"'}, extra_body={"idempotency_key": key}
        )
        other = await client.batches.with_raw_response.create(**params, extra_body={"idempotency_key": key + "-x"})
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    batch_id = first.parse().id
    for replay in (by_body, quoted, bare, both):
        assert replay.status_code == 200
        assert replay.headers.get("Idempotent-Replayed") == "true"
        assert replay.parse().id == batch_id
    assert other.parse().id != batch_id and "idempotent-replayed" not in other.headers


async def test_a_header_key_differing_from_the_body_key_is_a_400_naming_the_param(live: Live) -> None:
    async with async_client(live.base_url) as client:
        file_id = await upload_batch_file(client, [line_for(CHAT, 0, "idem-mismatch")])
        with pytest.raises(openai.BadRequestError) as caught:
            await client.batches.create(
                input_file_id=file_id,
                endpoint=CHAT,
                completion_window="24h",
                extra_headers={"Idempotency-Key": '"header-key"'},
                extra_body={"idempotency_key": "body-key"},
            )
        with pytest.raises(openai.BadRequestError) as malformed:
            await client.batches.create(
                input_file_id=file_id,
                endpoint=CHAT,
                completion_window="24h",
                extra_headers={"Idempotency-Key": '"unterminated'},
            )
        before = (await client.batches.list(limit=100)).data
    sdk_error(caught.value, param="idempotency_key")
    assert caught.value.param == "idempotency_key"
    sdk_error(malformed.value, param="Idempotency-Key")
    assert not [b for b in before if b.input_file_id == file_id]  # neither request created a batch


# 3. 409s, not retried -----------------------------------------------------------------------------------------


async def test_a_key_reused_with_other_metadata_is_a_409_the_sdk_does_not_retry(live: Live) -> None:
    log = RequestLog()
    key = "idem-conflict-1"
    with sync_client(live.base_url, log) as client:
        uploaded = await in_thread(client.files.create, file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
        params: dict[str, Any] = {"input_file_id": uploaded.id, "endpoint": CHAT, "completion_window": "24h"}
        first = await in_thread(
            client.batches.create, **params, metadata={"v": "1"}, extra_body={"idempotency_key": key}
        )
        sent_before = log.count("POST", "/v1/batches")
        with pytest.raises(openai.ConflictError) as caught:
            await in_thread(
                client.batches.create, **params, metadata={"v": "2"}, extra_headers={"Idempotency-Key": key}
            )
        assert log.count("POST", "/v1/batches") - sent_before == 1  # max_retries is 2: one request means no retry
    assert caught.value.status_code == 409
    assert caught.value.response.headers.get("x-should-retry") == "false"
    error = sdk_error(caught.value, param="idempotency_key")
    assert first.id in error["message"]


async def test_cancelling_a_completed_batch_is_a_409_with_openais_message_and_no_retry(live: Live) -> None:
    log = RequestLog()
    async with async_client(live.base_url, log) as client:
        file_id = await upload_batch_file(client, [line_for(CHAT, 0, "cancel-completed")])
        batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        assert (await wait_batch(client, batch.id)).status == "completed"
        with pytest.raises(openai.ConflictError) as caught:
            await client.batches.cancel(batch.id)
        assert log.count("POST", f"/v1/batches/{batch.id}/cancel") == 1
        assert (await client.batches.retrieve(batch.id)).status == "completed"
    assert caught.value.response.headers.get("x-should-retry") == "false"
    assert sdk_error(caught.value)["message"] == "Cannot cancel a batch with status 'completed'."
    assert caught.value.type == "invalid_request_error"


# 4. 404s and 400s ---------------------------------------------------------------------------------------------


async def test_missing_batches_and_files_are_openai_shaped_404s(live: Live) -> None:
    async with async_client(live.base_url) as client:
        calls: list[Callable[[], Any]] = [
            lambda: client.batches.retrieve("batch_missing"),
            lambda: client.batches.cancel("batch_missing"),
            lambda: client.files.retrieve("file-missing"),
            lambda: client.files.content("file-missing"),
            lambda: client.files.delete("file-missing"),
        ]
        for call in calls:
            with pytest.raises(openai.NotFoundError) as caught:
                await call()
            error = sdk_error(caught.value)
            assert error["type"] == "invalid_request_error"
            assert "missing" in error["message"]


async def test_an_unknown_route_is_an_openai_shaped_404(live: Live) -> None:
    status, headers, body = await raw(live, "GET", "/nope")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
    error = assert_openai_error(body)
    assert "/v1/nope" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "param"),
    [
        ("POST", "/batches", {"json": {"input_file_id": "file-x", "completion_window": "24h"}}, "endpoint"),
        ("POST", "/batches", {"json": {"endpoint": CHAT, "completion_window": "24h"}}, "input_file_id"),
        ("GET", "/batches", {"params": {"limit": "abc"}}, "limit"),
        ("GET", "/files", {"params": {"order": "sideways"}}, "order"),
        ("GET", "/files", {"params": {"purpose": "nonsense"}}, "purpose"),
    ],
)
async def test_request_validation_errors_are_400s_naming_the_field(
    live: Live, method: str, path: str, kwargs: dict[str, Any], param: str
) -> None:
    status, _, body = await raw(live, method, path, **kwargs)
    assert status == 400, body
    error = assert_openai_error(body, param=param)
    assert error["type"] == "invalid_request_error"


async def test_a_body_that_is_not_json_is_a_400(live: Live) -> None:
    status, _, body = await raw(
        live, "POST", "/batches", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400, body
    assert_openai_error(body)


async def test_a_bad_endpoint_and_a_bad_limit_are_400s_through_the_sdk(live: Live) -> None:
    async with async_client(live.base_url) as client:
        file_id = await upload_batch_file(client, [line_for(CHAT, 0, "bad-endpoint")])
        with pytest.raises(openai.BadRequestError) as endpoint:
            await client.batches.create(
                input_file_id=file_id, endpoint=cast(Any, "/v1/invalid/endpoint"), completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError) as limit:
            await client.batches.list(limit=101)
    assert sdk_error(endpoint.value, param="endpoint")["code"] == "invalid_value"
    assert "/v1/invalid/endpoint" in endpoint.value.message
    sdk_error(limit.value, param="limit")


async def test_a_bad_completion_window_is_a_400_whose_message_names_completion_window(live: Live) -> None:
    async with async_client(live.base_url) as client:
        file_id = await upload_batch_file(client, [line_for(CHAT, 0, "bad-window")])
        with pytest.raises(openai.BadRequestError) as window:
            await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window=cast(Any, "1y"))
    message = sdk_error(window.value, param="completion_window")["message"]
    # OpenAI's message for a bad completion_window names the parameter (spec section 2, [OBS]); a client that only
    # shows the message (the SDK's str(exc)) cannot tell which field was wrong otherwise.
    assert "completion_window" in message, f"the message does not name completion_window: {message!r}"


# 8. input files that fail validation --------------------------------------------------------------------------


async def test_lines_that_pass_the_upload_check_but_not_validation_fail_the_batch_with_line_numbers(
    live: Live,
) -> None:
    lines = [
        line_for(CHAT, 0, "malformed"),
        {"custom_id": "no-body", "method": "POST", "url": CHAT},
        line_for(CHAT, 2, "malformed") | {"url": EMBEDDINGS},
        line_for(CHAT, 0, "malformed-dup"),  # custom_id req-0 again
    ]
    async with async_client(live.base_url) as client:
        file_id = await upload_batch_file(client, lines)
        batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        done = await wait_batch(client, batch.id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors is not None and done.errors.data is not None
    assert [(e.line, e.code, e.param) for e in done.errors.data] == [
        (2, "missing_required_parameter", "body"),
        (3, "invalid_url", "url"),
        (4, "duplicate_custom_id", "custom_id"),
    ]
    assert all(e.message for e in done.errors.data)
    assert done.output_file_id is None
    assert not any(key.startswith("malformed") for key in live.backend.seen)  # nothing ran


async def test_a_request_the_backend_refuses_says_why_in_its_response_and_in_its_error(live: Live) -> None:
    """OpenAI's clients read the reason from the response body; llama-stack's from the line's `error`."""
    refused = line_for(CHAT, 1, "refused")
    refused["body"]["messages"] = []  # passes validation; the backend answers 400
    async with async_client(live.base_url) as client:
        file_id = await upload_batch_file(client, [line_for(CHAT, 0, "refused"), refused])
        batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        done = await wait_batch(client, batch.id)
        assert done.error_file_id is not None
        [line] = [json.loads(text) for text in (await client.files.content(done.error_file_id)).text.splitlines()]
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.failed == 1
    assert line["custom_id"] == "req-1" and line["response"]["status_code"] == 400
    body_error = line["response"]["body"]["error"]
    assert line["error"] == {"code": "invalid_request_error", "message": body_error["message"]}


async def test_a_batch_of_two_models_fails_with_mismatched_model_on_each_other_line(live: Live) -> None:
    other = line_for(CHAT, 1, "two-models")
    lines = [line_for(CHAT, 0, "two-models"), {**other, "body": {**other["body"], "model": "fake-embed"}}]
    async with async_client(live.base_url) as client:
        file_id = await upload_batch_file(client, lines)
        batch = await client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
        done = await wait_batch(client, batch.id)
    assert done.status == "failed" and done.errors is not None and done.errors.data is not None
    assert [(e.line, e.code, e.param) for e in done.errors.data] == [(2, "mismatched_model", "body.model")]
    assert not any(key.startswith("two-models") for key in live.backend.seen)  # nothing ran


# 5. pagination (last: it adds 105 batches to this server) -----------------------------------------------------


async def test_list_auto_paginates_over_more_than_100_batches_newest_first(live: Live) -> None:
    log = RequestLog()
    async with async_client(live.base_url) as aclient:
        file_id = await upload_batch_file(aclient, [line_for(CHAT, 0, "pagination")])
        created = []
        for _ in range(105):
            batch = await aclient.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
            created.append(batch.id)
    with sync_client(live.base_url, log) as client:
        listed = await in_thread(lambda: [b.id for b in client.batches.list(limit=100)])
    assert len(listed) == len(set(listed)), "duplicates across pages"
    assert listed[:105] == created[::-1]  # the newest batches, newest first
    assert set(created) <= set(listed) and len(listed) >= 105
    assert log.count("GET", "/v1/batches") == -(-len(listed) // 100)  # pages of 100, no empty last page


async def test_a_json_body_over_1_mib_is_a_413_by_length_or_while_streaming(live: Live) -> None:
    big = b'{"input_file_id": "' + b"x" * (2 * 1024 * 1024) + b'", "endpoint": "/v1/chat/completions"}'

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    async with aiohttp.ClientSession() as session:
        for body in (io.BytesIO(big), chunked()):
            async with session.post(
                f"{live.base_url}/batches", data=body, headers={"content-type": "application/json"}
            ) as answer:
                assert answer.status == 413
                assert (await answer.json())["error"]["code"] == "body_too_large"
