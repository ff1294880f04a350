"""remote::openai: the Inference conformance suite against the fake backend over HTTP, plus fault handling."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2  # the openai SDK's HTTP library, whose request and response its errors carry
import openai
import orjson
import pytest

from llama_batches import build_stack
from llama_batches.api import Endpoint
from llama_batches.errors import (
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llama_batches.upstream import error_from_sdk
from llama_batches_openai.config import OpenAIConfig
from llama_batches_openai.inference import OpenAICompatInference

from .conftest import openai_provider, run_config
from .fake_backend import FakeBackend

HELLO = [{"role": "user", "content": "hello"}]


def _chat_body(content: str = "hello", model: str = "fake-model") -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": content}]})


@asynccontextmanager
async def openai_inference(base_url: str, **config: Any) -> AsyncIterator[OpenAICompatInference]:
    """The provider on ``base_url`` with SDK retries off (so faults surface at once), shut down afterwards."""
    impl = OpenAICompatInference(OpenAIConfig.model_validate({"base_url": base_url, "max_retries": 0, **config}))
    try:
        yield impl
    finally:
        await impl.shutdown()


async def test_raw_request_forwards_the_body_and_keeps_the_answer_as_is(fake_backend: FakeBackend) -> None:
    async with openai_inference(fake_backend.base_url) as impl:
        answer = await impl.raw_request(Endpoint.chat_completions, "fake-model", _chat_body("ping"))
    assert answer.status_code == 200
    assert orjson.loads(answer.body)["choices"][0]["message"]["content"] == "echo: ping"
    assert answer.headers["x-request-id"].startswith("req_")
    assert answer.headers["content-type"].startswith("application/json")
    assert fake_backend.seen == {"ping": 1} and fake_backend.answered == {"ping": 1}


async def test_raw_request_returns_injected_failures_with_their_headers() -> None:
    async with FakeBackend(fail_rate=1.0) as backend, openai_inference(backend.base_url) as impl:
        first = await impl.raw_request(Endpoint.chat_completions, "fake-model", _chat_body())
        second = await impl.raw_request(Endpoint.chat_completions, "fake-model", _chat_body())
    assert (first.status_code, second.status_code) == (500, 429)
    assert second.headers["retry-after"] == "0"
    assert orjson.loads(second.body)["error"]["code"] == "rate_limit_exceeded"
    assert backend.injected_failures == 2 and backend.succeeded == 0
    assert backend.seen == {"hello": 2} and backend.answered == {}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_backend_that_is_down_is_service_unavailable() -> None:
    async with openai_inference(f"http://127.0.0.1:{_closed_port()}/v1") as impl:
        with pytest.raises(ServiceUnavailableError) as raw_error:
            await impl.raw_request(Endpoint.chat_completions, "fake-model", _chat_body())
        with pytest.raises(ServiceUnavailableError) as typed_error:
            await impl.openai_chat_completion("fake-model", HELLO)
        with pytest.raises(ServiceUnavailableError):
            await impl.list_provider_models()
    assert raw_error.value.status == typed_error.value.status == 503
    assert "cannot be reached" in raw_error.value.message


async def test_a_slow_backend_is_an_upstream_timeout() -> None:
    async with FakeBackend(latency_s=5.0) as backend, openai_inference(backend.base_url, timeout_s=0.2) as impl:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeoutError) as raw_error:
            await impl.raw_request(Endpoint.chat_completions, "fake-model", _chat_body())
        with pytest.raises(UpstreamTimeoutError):
            await impl.openai_chat_completion("fake-model", HELLO)
        elapsed = loop.time() - started
    assert raw_error.value.status == 504
    assert elapsed < 3.0
    assert backend.succeeded == 0


async def test_typed_calls_map_backend_4xx_to_the_error_tree(fake_backend: FakeBackend) -> None:
    async with openai_inference(fake_backend.base_url) as impl:
        with pytest.raises(NotFoundError) as not_found:
            await impl.openai_chat_completion("no-such-model", HELLO)
        with pytest.raises(InvalidRequestError) as no_messages:
            await impl.openai_chat_completion("fake-model", [])
        with pytest.raises(InvalidRequestError) as no_model:
            await impl.openai_embeddings("", "text")
    assert (not_found.value.status, not_found.value.code, not_found.value.param) == (404, "model_not_found", "model")
    assert "does not exist" in not_found.value.message
    assert (no_messages.value.status, no_messages.value.param) == (400, "messages")
    assert (no_model.value.status, no_model.value.param) == (400, "model")
    assert fake_backend.rejected == 3


async def test_typed_calls_map_rate_limits_and_server_errors() -> None:
    async with FakeBackend(fail_rate=1.0) as backend, openai_inference(backend.base_url) as impl:
        with pytest.raises(UpstreamError) as server_error:  # injected 500
            await impl.openai_chat_completion("fake-model", HELLO)
        with pytest.raises(RateLimitedError) as rate_limited:  # injected 429
            await impl.openai_chat_completion("fake-model", HELLO)
    assert server_error.value.status == 502
    assert (rate_limited.value.status, rate_limited.value.code) == (429, "rate_limit_exceeded")


async def test_rejected_credentials_are_our_upstream_problem_not_the_callers() -> None:
    async with FakeBackend(api_key="right") as backend, openai_inference(backend.base_url, api_key="wrong") as impl:
        with pytest.raises(UpstreamError) as refused:
            await impl.openai_chat_completion("fake-model", HELLO)
        raw = await impl.raw_request(Endpoint.chat_completions, "fake-model", _chat_body())
    assert refused.value.status == 502 and "credentials" in refused.value.message
    assert raw.status_code == 401


def test_error_from_sdk_keeps_status_code_and_param() -> None:
    request = httpx2.Request("POST", "http://backend/v1/chat/completions")
    body = {"message": "bad temperature", "type": "invalid_request_error", "param": "temperature", "code": "range"}
    response = httpx2.Response(422, request=request, json={"error": body})
    sdk_error = openai.UnprocessableEntityError("bad temperature", response=response, body=body)
    error = error_from_sdk(sdk_error, "The backend")
    assert isinstance(error, InvalidRequestError)
    assert (error.status, error.code, error.param, error.message) == (400, "range", "temperature", "bad temperature")
    assert isinstance(error_from_sdk(openai.APITimeoutError(request), "The backend"), UpstreamTimeoutError)
    assert isinstance(error_from_sdk(openai.APIConnectionError(request=request), "X"), ServiceUnavailableError)


async def test_a_stack_routes_inference_to_the_fake_backend(tmp_path: Path, fake_backend: FakeBackend) -> None:
    config = run_config(tmp_path, openai_provider(fake_backend.base_url, provider_id="fake"))
    async with build_stack(config) as stack:
        answer = await stack.inference.openai_chat_completion("fake/fake-model", HELLO)
        raw = await stack.inference.raw_request(
            Endpoint.completions, "fake-model", b'{"model":"fake-model","prompt":"x"}'
        )
        models = {m.identifier for m in await stack.models.list_models()}
    assert answer.choices[0].message.content == "echo: hello"
    assert raw.status_code == 200 and orjson.loads(raw.body)["choices"][0]["text"] == "echo: x"
    assert {"fake-model", "fake-embed", "fake/fake-model"} <= models
    assert (tmp_path / "sql.db").is_file()


async def test_the_fake_backend_runs_as_a_process() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fake_backend", "--port", "0", "--fail-rate", "0",
        cwd=Path(__file__).parent.parent, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        ready = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()
        assert ready[0] == "READY" and ready[1].startswith("http://127.0.0.1:")
        async with openai_inference(ready[1]) as impl:
            answer = await impl.raw_request(Endpoint.embeddings, "fake-embed", b'{"model":"fake-embed","input":"x"}')
            assert answer.status_code == 200
            assert "fake-embed" in await impl.list_provider_models()
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0
