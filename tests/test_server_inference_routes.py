"""``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` on a real ``llama-batches serve`` with
``server.auth`` on, driven by the unmodified openai SDK and by raw HTTP, in front of the fake backend over HTTP.

The answers are the backend's (its bytes, passed through), an unknown model is a 404 in OpenAI's shape, a body the
server cannot use is a 400 naming what is wrong (``stream`` included: the raw path carries whole answers), the
backend's error answers keep their meaning, authentication comes before the body is read, and the inference body cap
is larger than the 1 MiB of the other routes.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from llama_batches.server.limits import MAX_INFERENCE_BODY_BYTES, MAX_JSON_BODY_BYTES

from .conftest import openai_provider, run_config
from .fake_backend import FakeBackend, Scripted
from .fake_backend_answers import vector
from .server_process import ServerProcess
from .test_provider_reference import reference_config
from .test_server import Live, assert_openai_error, sdk_error

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY = "inference-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT, COMPLETIONS, EMBEDDINGS = "/chat/completions", "/completions", "/embeddings"
DEADLINE_S = 20.0
TOO_HOT = {"message": "temperature is too hot", "param": "temperature", "code": "invalid_value"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    directory = tmp_path_factory.mktemp("inference-routes")
    async with FakeBackend() as backend:
        config = reference_config(directory, backend)
        config["server"] = {"auth": {"api_keys": [{"key": KEY, "principal": "alice"}]}}
        async with ServerProcess(config, directory) as server:
            yield Live(server, backend, directory)


@pytest_asyncio.fixture(loop_scope="module")
async def sdk(live: Live) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=live.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S) as client:
        yield client


@contextmanager
def scripted(backend: FakeBackend, answer: Scripted) -> Iterator[None]:
    """The backend answers every inference request with ``answer`` inside the block."""
    backend.script = lambda path, body, attempt: answer
    try:
        yield
    finally:
        backend.script = None


async def post(live: Live, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """POST ``body`` with the token (unless ``headers`` say otherwise): status, headers, body bytes."""
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sent = {"Content-Type": "application/json", **(AUTH if headers is None else headers)}
        async with session.post(live.base_url + path, data=io.BytesIO(body), headers=sent) as answer:
            return answer.status, answer.headers, await answer.read()


def inference_requests(backend: FakeBackend) -> int:
    return sum(count for path, count in backend.requests.items() if path != "/v1/models")


async def test_the_openai_sdk_gets_the_backends_answers(live: Live, sdk: openai.AsyncOpenAI) -> None:
    chat = await sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi chat"}])
    assert chat.choices[0].message.content == "echo: hi chat" and chat.model == "fake-model"
    completion = await sdk.completions.create(model="fake-model", prompt="hi completion")
    assert completion.choices[0].text == "echo: hi completion"
    embedded = await sdk.embeddings.create(model="fake-embed", input=["hi embed", "again"])
    expected = [vector("hi embed", live.backend.embedding_dim), vector("again", live.backend.embedding_dim)]
    assert [item.embedding for item in embedded.data] == [pytest.approx(v, abs=1e-6) for v in expected]
    assert live.backend.answered["hi chat"] == 1 and live.backend.answered["hi completion"] == 1


async def test_the_answer_is_the_backends_bytes_with_its_request_id(live: Live) -> None:
    answer = b'{"id": "chatcmpl-x",  "object": "chat.completion", "choices": [], "extra": {"kept": [1, 2.50]}}'
    with scripted(live.backend, Scripted(200, answer, headers={"x-request-id": "req_from_backend"})):
        status, headers, body = await post(live, CHAT, b'{"model": "fake-model", "messages": []}')
    assert (status, body) == (200, answer)
    assert headers["x-request-id"] == "req_from_backend" and headers["content-type"] == "application/json"


async def test_an_unknown_model_is_a_404_in_openais_shape(live: Live, sdk: openai.AsyncOpenAI) -> None:
    before = inference_requests(live.backend)
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    error = sdk_error(caught.value, param="model")
    assert error["code"] == "model_not_found" and "no-such-model" in error["message"]
    with pytest.raises(openai.NotFoundError):
        await sdk.embeddings.create(model="no-such-model", input="x")
    assert inference_requests(live.backend) == before


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b'{"model": "fake-model", "messages": [', None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b'["fake-model"]', None, "invalid_type"),
        (b'{"messages": []}', "model", "missing_required_parameter"),
        (b'{"model": 7, "messages": []}', "model", "invalid_type"),
        (b'{"model": "fake-model", "messages": [], "stream": true}', "stream", "streaming_unsupported"),
        (b'{"model": "fake-model", "prompt": "x", "stream": "yes"}', "stream", "streaming_unsupported"),
    ],
)
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, EMBEDDINGS])
async def test_a_body_the_server_cannot_use_is_a_400_naming_what_is_wrong(
    live: Live, path: str, body: bytes, param: str | None, code: str
) -> None:
    before = inference_requests(live.backend)
    status, _, answer = await post(live, path, body)
    assert status == 400, answer
    assert assert_openai_error(orjson.loads(answer), param=param, check_param=True)["code"] == code
    assert inference_requests(live.backend) == before


async def test_stream_true_through_the_sdk_is_a_400_naming_stream(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}], stream=True)
    assert sdk_error(caught.value, param="stream")["code"] == "streaming_unsupported"
    async with openai.AsyncOpenAI(base_url=sdk.base_url, api_key=KEY, max_retries=0) as plain:
        answer = await plain.chat.completions.create(  # stream=False is served
            model="fake-model", messages=[{"role": "user", "content": "not streamed"}], stream=False
        )
    assert answer.choices[0].message.content == "echo: not streamed"


@pytest.mark.parametrize("token", [None, "wrong-token-0123456789"], ids=["no-token", "wrong-token"])
async def test_without_a_valid_token_every_inference_route_is_a_401(live: Live, token: str | None) -> None:
    before = inference_requests(live.backend)
    async with openai.AsyncOpenAI(base_url=live.base_url, api_key=token or "unused", max_retries=0) as client:
        if token is None:  # the SDK always sends a key: send none at all with raw HTTP
            status, headers, body = await post(live, CHAT, b'{"model": "fake-model", "messages": []}', headers={})
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer ")
            assert assert_openai_error(orjson.loads(body))["type"] == "authentication_error"
        calls = [
            client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "x"}]),
            client.completions.create(model="fake-model", prompt="x"),
            client.embeddings.create(model="fake-embed", input="x"),
        ]
        for call in calls:
            with pytest.raises(openai.AuthenticationError) as caught:
                await call
            assert sdk_error(caught.value)["type"] == "authentication_error"
    assert inference_requests(live.backend) == before


async def head_of_answer(live: Live, request: bytes) -> str:
    """Send ``request`` (headers only) on a raw connection; the head of the first answer the server sends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", live.server.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(DEADLINE_S):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    return head.decode("latin-1")


def expecting(path: str, length: int, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST /v1{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()


async def test_authentication_comes_before_the_body_is_read(live: Live) -> None:
    """A client waiting for ``100 Continue`` is never asked for its body when it has no token: the 401 comes first."""
    head = await head_of_answer(live, expecting(EMBEDDINGS, MAX_INFERENCE_BODY_BYTES // 2, token=None))
    assert head.startswith("HTTP/1.1 401 "), head
    head = await head_of_answer(live, expecting(EMBEDDINGS, MAX_INFERENCE_BODY_BYTES // 2, token=KEY))
    assert head.startswith("HTTP/1.1 100 "), head  # with a token, the body is asked for


async def test_a_body_over_the_inference_cap_is_a_413_before_it_is_read(live: Live) -> None:
    head = await head_of_answer(live, expecting(CHAT, MAX_INFERENCE_BODY_BYTES + 1, token=KEY))
    assert head.startswith("HTTP/1.1 413 "), head


async def test_a_client_that_leaves_mid_body_costs_nothing_and_logs_no_traceback(
    live: Live, sdk: openai.AsyncOpenAI
) -> None:
    before = inference_requests(live.backend)
    for path in (CHAT, COMPLETIONS, EMBEDDINGS):
        _, writer = await asyncio.open_connection("127.0.0.1", live.server.port)
        head = f"POST /v1{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n"
        writer.write(head.encode() + b'{"model": "fake-model"')
        await writer.drain()
        writer.close()
    answer = await sdk.completions.create(model="fake-model", prompt="after the leavers")  # served all along
    assert answer.choices[0].text == "echo: after the leavers"
    assert inference_requests(live.backend) == before + 1
    assert "Traceback" not in live.server.log_path.read_text(errors="replace")


async def _sized_embeddings(request: web.Request) -> web.Response:
    """An embedding whose one number is the length of the input received: the body came whole."""
    body = await request.json()
    data = [{"object": "embedding", "index": 0, "embedding": [float(len(body["input"]))]}]
    answer = {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    return web.json_response(answer)


async def _one_model(request: web.Request) -> web.Response:
    return web.json_response(
        {"object": "list", "data": [{"id": "big", "object": "model", "created": 0, "owned_by": "x"}]}
    )


@pytest_asyncio.fixture(loop_scope="module")
async def big_body_backend() -> AsyncIterator[str]:
    """An OpenAI-compatible backend that takes bodies up to twice the inference cap (the fake backend takes 1 MiB)."""
    app = web.Application(client_max_size=2 * MAX_INFERENCE_BODY_BYTES)
    app.router.add_post("/v1/embeddings", _sized_embeddings)
    app.router.add_get("/v1/models", _one_model)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_an_inference_body_over_the_json_cap_of_other_routes_is_served(
    live: Live, big_body_backend: str, tmp_path: Path
) -> None:
    text = "long " * (MAX_JSON_BODY_BYTES // 2)  # 2.5 MiB of input
    body = orjson.dumps({"model": "big", "input": text, "encoding_format": "float"})
    assert MAX_JSON_BODY_BYTES < len(body) < MAX_INFERENCE_BODY_BYTES
    async with ServerProcess(run_config(tmp_path, openai_provider(big_body_backend)), tmp_path) as server:
        status, _, answer = await post(Live(server, live.backend, tmp_path), EMBEDDINGS, body, headers={})
    assert status == 200, answer[:300]
    assert orjson.loads(answer)["data"][0]["embedding"] == [len(text)]
    status, _, answer = await post(live, "/batches", body)  # the other routes keep their 1 MiB
    assert status == 413 and assert_openai_error(orjson.loads(answer))["code"] == "body_too_large"


@pytest.mark.parametrize(
    ("backend_answer", "status", "expected"),
    [
        (Scripted(400, orjson.dumps({"error": TOO_HOT | {"type": "invalid_request_error"}})), 400, TOO_HOT),
        (Scripted(422, b'{"object": "error", "message": "bad field"}'), 400, {"message": "bad field"}),
        (Scripted(429, b'{"error": {"message": "slow down"}}', headers={"Retry-After": "7"}), 429, {}),
        (Scripted(500, b"<html>oops</html>", content_type="text/html"), 502, {"type": "upstream_error"}),
        (Scripted(401, b'{"error": {"message": "Incorrect API key"}}'), 502, {"type": "upstream_error"}),
        (Scripted(200, b"<html>not json</html>", content_type="text/html"), 502, {"code": "invalid_response"}),
        (Scripted(200, b"[1, 2]"), 502, {"code": "invalid_response"}),
    ],
    ids=["400-kept", "422-is-400", "429-retry-after", "500-is-502", "401-is-ours-502", "200-html", "200-array"],
)
async def test_the_backends_error_answers_keep_their_meaning(
    live: Live, backend_answer: Scripted, status: int, expected: dict[str, str]
) -> None:
    with scripted(live.backend, backend_answer):
        got, headers, body = await post(live, CHAT, b'{"model": "fake-model", "messages": []}')
    assert got == status, body
    error = assert_openai_error(orjson.loads(body))
    assert {key: error[key] for key in expected} == expected
    if status == 429:
        assert headers["Retry-After"] == "7" and error["message"] == "slow down"
    if status == 502:
        assert "oops" in error["message"] or "Incorrect" in error["message"] or "JSON object" in error["message"]
