"""A fake OpenAI-compatible inference server over real HTTP, for tests and benchmarks.

In a test::

    async with FakeBackend(latency_s=0.0, fail_rate=0.2, seed=0) as backend:
        config = OpenAIConfig(base_url=backend.base_url, api_key="test")
        ...
        assert backend.succeeded == 10 and backend.seen["hello"] == 1

As a process (prints ``READY http://127.0.0.1:PORT/v1`` once listening, serves until SIGTERM or SIGINT)::

    python -m tests.fake_backend --port 0 --latency-ms 200 --fail-rate 0.2

Endpoints: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings`` answer deterministic OpenAI-shaped
JSON (a chat answer is ``"echo: <last user message>"``); ``GET /v1/models`` lists the configured models;
``GET /_stats`` returns the counters as JSON and ``POST /_reset`` zeroes them.

Faults: with probability ``fail_rate`` (seeded RNG) a request is answered 500, or 429 with ``Retry-After: 0``
(alternately, starting with 500). Validation follows OpenAI: a missing ``model`` or ``messages`` is a 400 and an
unknown model a 404 ``model_not_found``, with OpenAI's error body. Every answer carries ``x-request-id``.

Counters: ``requests`` (per path, every request), ``succeeded`` (2xx answers to inference endpoints),
``injected_failures``, ``rejected`` (validation errors), and ``seen[key]`` / ``answered[key]``: how many requests
(including failed attempts) / successful answers there were per request identity. The key is
``messages[-1].content`` for chat, ``prompt`` for completions and ``input`` for embeddings: the value itself when
it is a string, its JSON otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import random
import signal
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

__all__ = ["DEFAULT_MODELS", "FakeBackend", "main"]

DEFAULT_MODELS = ("fake-model", "fake-embed")
Handler = Callable[[web.Request], Awaitable[web.Response]]
_INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_IDENTITY_FIELD = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}


class _Reject(Exception):
    """An OpenAI-shaped error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers or {}


def _identity(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _words(value: Any) -> int:
    """A crude token count: the words of a string, or of every string inside a list or a message."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        return _words(value.get("content")) + _words(value.get("text"))
    return 0


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def _vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit-free vector in [-1, 1] for ``text``."""
    digest = hashlib.blake2b(text.encode(), digest_size=64).digest()
    raw = (digest * (dimensions // len(digest) + 1))[:dimensions]
    return [round(byte / 127.5 - 1.0, 6) for byte in raw]


class FakeBackend:
    """An OpenAI-compatible server on loopback with deterministic answers, latency and fault injection."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        fail_rate: float = 0.0,
        seed: int = 0,
        models: Sequence[str] = DEFAULT_MODELS,
        api_key: str | None = None,
        embedding_dim: int = 8,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency_s = latency_s
        self.fail_rate = fail_rate
        self.models = list(models)
        self.api_key = api_key
        self.embedding_dim = embedding_dim
        self.host = host
        self.port = port
        self._seed = seed
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._answer_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.requests: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.answered: dict[str, int] = {}
        self.succeeded = 0
        self.injected_failures = 0
        self.rejected = 0

    # lifecycle -------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, once started."""
        if self._runner is None:
            raise RuntimeError("the fake backend is not started")
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        """Listen on ``host:port`` (a free port when ``port`` is 0)."""
        app = web.Application()
        for path in _INFERENCE_PATHS:
            app.router.add_post(path, self._inference)
        app.router.add_get("/v1/models", self._guarded(self._list_models))
        app.router.add_get("/_stats", self._guarded(self._stats))
        app.router.add_post("/_reset", self._guarded(self._reset))
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBackend:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # counters --------------------------------------------------------------------------------------------------

    @property
    def total_requests(self) -> int:
        """Requests received on every path."""
        return sum(self.requests.values())

    def stats(self) -> dict[str, Any]:
        """The counters, as ``GET /_stats`` returns them."""
        return {
            "requests": dict(self.requests),
            "total_requests": self.total_requests,
            "succeeded": self.succeeded,
            "injected_failures": self.injected_failures,
            "rejected": self.rejected,
            "seen": dict(self.seen),
            "answered": dict(self.answered),
        }

    def reset(self) -> None:
        """Zero the counters and reseed the fault injection."""
        self.requests.clear()
        self.seen.clear()
        self.answered.clear()
        self.succeeded = self.injected_failures = self.rejected = 0
        self._rng = random.Random(self._seed)

    # HTTP ------------------------------------------------------------------------------------------------------

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        response = web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
        response.headers["x-request-id"] = f"req_{next(self._ids)}"
        if headers:
            response.headers.update(headers)
        return response

    def _guarded(self, handler: Callable[[web.Request], Awaitable[Any]]) -> Handler:
        """``handler`` returning a JSON body, with request counting and ``x-request-id``."""

        async def wrapped(request: web.Request) -> web.Response:
            self.requests[request.path] = self.requests.get(request.path, 0) + 1
            try:
                return self._answer(200, await handler(request))
            except _Reject as reject:
                self.rejected += 1
                return self._answer(reject.status, reject.body, reject.headers)

        return wrapped

    async def _list_models(self, request: web.Request) -> dict[str, Any]:
        self._check_auth(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake-backend"} for m in self.models]
        return {"object": "list", "data": data}

    async def _stats(self, request: web.Request) -> dict[str, Any]:
        return self.stats()

    async def _reset(self, request: web.Request) -> dict[str, Any]:
        self.reset()
        return {"reset": True}

    async def _inference(self, request: web.Request) -> web.Response:
        path = request.path
        self.requests[path] = self.requests.get(path, 0) + 1
        try:
            self._check_auth(request)
            body = await self._body(request)
            key = self._count_identity(path, body)
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            self._maybe_fail()
            answer = self._respond(path, body)
        except _Reject as reject:
            if reject.status not in (429, 500):
                self.rejected += 1
            return self._answer(reject.status, reject.body, reject.headers)
        self.succeeded += 1
        if key is not None:
            self.answered[key] = self.answered.get(key, 0) + 1
        return self._answer(200, answer)

    def _check_auth(self, request: web.Request) -> None:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise _Reject(401, "Incorrect API key provided.", code="invalid_api_key")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise _Reject(400, f"We could not parse the JSON body of your request: {exc}") from exc
        if not isinstance(body, dict):
            raise _Reject(400, "The request body must be a JSON object.")
        return body

    def _count_identity(self, path: str, body: dict[str, Any]) -> str | None:
        value = body.get(_IDENTITY_FIELD[path])
        if path == "/v1/chat/completions":
            last = value[-1] if isinstance(value, list) and value else None
            value = last.get("content") if isinstance(last, dict) else None
        if value is None:
            return None
        key = _identity(value)
        self.seen[key] = self.seen.get(key, 0) + 1
        return key

    def _maybe_fail(self) -> None:
        if self.fail_rate <= 0 or self._rng.random() >= self.fail_rate:
            return
        self.injected_failures += 1
        if self.injected_failures % 2:
            raise _Reject(500, "The server had an error while processing your request.", type_="server_error")
        raise _Reject(
            429, "Rate limit reached.", type_="requests", code="rate_limit_exceeded", headers={"Retry-After": "0"}
        )

    def _respond(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _Reject(400, "you must provide a model parameter", param="model")
        if model not in self.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            raise _Reject(404, message, param="model", code="model_not_found")
        if path == "/v1/chat/completions":
            return self._chat(model, body)
        if path == "/v1/completions":
            return self._completion(model, body)
        return self._embeddings(model, body)

    def _chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _Reject(400, "Missing required parameter: 'messages'.", param="messages")
        last = messages[-1]
        content = last.get("content") if isinstance(last, dict) else None
        text = f"echo: {content if isinstance(content, str) else _identity(content)}"
        message = {"role": "assistant", "content": text, "refusal": None}
        return {
            "id": f"chatcmpl-fake{next(self._answer_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": _usage(_words(messages), _words(text)),
        }

    def _completion(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise _Reject(400, "Missing required parameter: 'prompt'.", param="prompt")
        texts = [f"echo: {_identity(p)}" for p in prompt]
        choices = [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)]
        return {
            "id": f"cmpl-fake{next(self._answer_ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": _usage(_words(prompt), _words(texts)),
        }

    def _embeddings(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs:
            raise _Reject(400, "Missing required parameter: 'input'.", param="input")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            vector = _vector(_identity(item), self.embedding_dim)
            encoded: Any = vector
            if as_base64:  # the openai SDK asks for base64 float32 and decodes it itself
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = _words(inputs)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_backend", description="A fake OpenAI-compatible server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each inference answer")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="probability of an injected 500/429")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids")
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    backend = FakeBackend(
        latency_s=args.latency_ms / 1000.0,
        fail_rate=args.fail_rate,
        seed=args.seed,
        models=[m for m in args.models.split(",") if m],
        api_key=args.api_key,
        host=args.host,
        port=args.port,
    )
    async with backend:
        print(f"READY {backend.base_url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake backend until SIGTERM or SIGINT."""
    asyncio.run(_serve(_parse_args(argv)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
