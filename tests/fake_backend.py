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

Scripted mode (``backend.script = ...``, see :mod:`tests.fake_backend_script`): a test picks any answer (status,
headers, bytes, content type, delay, or a dropped connection) per request; ``script`` returning None leaves a request
to the normal behaviour. Scripted answers count in ``requests`` and ``seen``, not in the other counters.

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

from .fake_backend_answers import Reject, identity, usage, vector, words
from .fake_backend_script import Script, Scripted, play

__all__ = ["DEFAULT_MODELS", "FakeBackend", "Scripted", "main"]

DEFAULT_MODELS = ("fake-model", "fake-embed")
Handler = Callable[[web.Request], Awaitable[web.Response]]
_INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_IDENTITY_FIELD = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/embeddings": "input"}


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
        self.script: Script | None = None
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
            except Reject as reject:
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

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests[path] = self.requests.get(path, 0) + 1
        raw = await request.read()
        scripted = self._scripted(self.script, path, raw) if self.script is not None else None
        if scripted is not None:
            return await play(request, scripted, f"req_{next(self._ids)}")
        try:
            self._check_auth(request)
            body = self._body(raw)
            key = self._count_identity(path, body)
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            self._maybe_fail()
            answer = self._respond(path, body)
        except Reject as reject:
            if reject.status not in (429, 500):
                self.rejected += 1
            return self._answer(reject.status, reject.body, reject.headers)
        self.succeeded += 1
        if key is not None:
            self.answered[key] = self.answered.get(key, 0) + 1
        return self._answer(200, answer)

    def _check_auth(self, request: web.Request) -> None:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise Reject(401, "Incorrect API key provided.", code="invalid_api_key")

    def _scripted(self, script: Script, path: str, raw: bytes) -> Scripted | None:
        """The script's answer, counted in ``seen`` (the attempt it is told is the count including this one)."""
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        key = self._identity_key(path, parsed) if isinstance(parsed, dict) else None
        scripted = script(path, parsed, self.seen.get(key, 0) + 1 if key is not None else 1)
        if scripted is not None and key is not None:
            self.seen[key] = self.seen.get(key, 0) + 1
        return scripted

    def _body(self, raw: bytes) -> dict[str, Any]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Reject(400, f"We could not parse the JSON body of your request: {exc}") from exc
        if not isinstance(body, dict):
            raise Reject(400, "The request body must be a JSON object.")
        return body

    def _identity_key(self, path: str, body: dict[str, Any]) -> str | None:
        value = body.get(_IDENTITY_FIELD[path])
        if path == "/v1/chat/completions":
            last = value[-1] if isinstance(value, list) and value else None
            value = last.get("content") if isinstance(last, dict) else None
        return None if value is None else identity(value)

    def _count_identity(self, path: str, body: dict[str, Any]) -> str | None:
        key = self._identity_key(path, body)
        if key is not None:
            self.seen[key] = self.seen.get(key, 0) + 1
        return key

    def _maybe_fail(self) -> None:
        if self.fail_rate <= 0 or self._rng.random() >= self.fail_rate:
            return
        self.injected_failures += 1
        if self.injected_failures % 2:
            raise Reject(500, "The server had an error while processing your request.", type_="server_error")
        raise Reject(
            429, "Rate limit reached.", type_="requests", code="rate_limit_exceeded", headers={"Retry-After": "0"}
        )

    def _respond(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Reject(400, "you must provide a model parameter", param="model")
        if model not in self.models:
            message = f"The model `{model}` does not exist or you do not have access to it."
            raise Reject(404, message, param="model", code="model_not_found")
        if path == "/v1/chat/completions":
            return self._chat(model, body)
        if path == "/v1/completions":
            return self._completion(model, body)
        return self._embeddings(model, body)

    def _chat(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise Reject(400, "Missing required parameter: 'messages'.", param="messages")
        last = messages[-1]
        content = last.get("content") if isinstance(last, dict) else None
        text = f"echo: {content if isinstance(content, str) else identity(content)}"
        message = {"role": "assistant", "content": text, "refusal": None}
        return {
            "id": f"chatcmpl-fake{next(self._answer_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
            "usage": usage(words(messages), words(text)),
        }

    def _completion(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise Reject(400, "Missing required parameter: 'prompt'.", param="prompt")
        texts = [f"echo: {identity(p)}" for p in prompt]
        choices = [{"index": i, "text": t, "finish_reason": "stop", "logprobs": None} for i, t in enumerate(texts)]
        return {
            "id": f"cmpl-fake{next(self._answer_ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(words(prompt), words(texts)),
        }

    def _embeddings(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs:
            raise Reject(400, "Missing required parameter: 'input'.", param="input")
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            values = vector(identity(item), self.embedding_dim)
            encoded: Any = values
            if as_base64:  # the openai SDK asks for base64 float32 and decodes it itself
                encoded = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = words(inputs)
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
