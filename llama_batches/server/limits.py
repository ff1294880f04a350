"""Request bodies are bounded by the route they are sent to, never by what the request's headers say.

Every request's body is capped at ``MAX_JSON_BODY_BYTES``, whatever its ``Content-Type`` (multipart included), and
read whole before the route runs (and before authentication: that cap is small): a ``Content-Length`` over the cap,
or a (chunked) body that grows past it, is a 413 ``body_too_large`` before any route acts (a ``DELETE`` or a cancel
with an over-cap body deletes or cancels nothing), and a route only ever sees a body within the cap. Two kinds of
routes, known by method and path (never by headers), read their body themselves instead:

- the upload route (``UPLOAD_ROUTES``): its body streams, it raises the cap of its own request with
  :func:`allow_body` when it starts reading and bounds what it reads itself (:mod:`.uploads`);
- the inference routes (``INFERENCE_ROUTES``: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``),
  capped at ``MAX_INFERENCE_BODY_BYTES`` (64 MiB: OpenAI takes up to 50 MB of images in one chat request, and the
  embeddings of many long inputs are big). The route reads the body first, before it acts, and only once the request
  is authenticated: a client without a token cannot make the server hold such a body.

A body read past its cap is the 413 whatever the route made of the error. A request with more than one
``Content-Type`` header is a 400: the framework and a route could read different ones.

Uploads are bounded across requests too (``server.uploads``): at most ``max_concurrent_uploads`` at once (another
is a 429 ``too_many_uploads`` with ``Retry-After``, before its body is read), and a body that sends nothing for
``idle_timeout_s`` while more is due (any route's) is a 408 ``request_timeout``: the route's reading fails, so an
upload stops and its spool is freed, and the connection is closed.

When the server answers before the whole body has arrived (a 413, a 429, a 400 on the first bad part, a 401), the
rest of the body is read and dropped before the answer if it is little (at most ``LINGER_BYTES``, within
``LINGER_SECS``): many clients (httpx, so the openai SDK) read an answer only once they have sent everything, and see
a reset connection instead of the error when the server closes while they write. When the rest is more than that (by
``Content-Length``, or as it comes), or the client sent ``Expect: 100-continue`` and has not been asked for the body
yet (reading would ask for it), the answer goes at once with ``Connection: close`` and the server reads no further.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api.common import Endpoint
from ..config_uploads import UploadsConfig
from ..errors import APIError, InvalidRequestError, PayloadTooLargeError, RateLimitedError
from .errors import error_response

__all__ = [
    "INFERENCE_ROUTES",
    "LINGER_BYTES",
    "LINGER_SECS",
    "MAX_INFERENCE_BODY_BYTES",
    "MAX_JSON_BODY_BYTES",
    "UPLOAD_RETRY_AFTER_SECS",
    "UPLOAD_ROUTES",
    "BodyLimit",
    "RequestTimeoutError",
    "allow_body",
]

MAX_JSON_BODY_BYTES = 1024 * 1024
LINGER_BYTES = 64 * 1024 * 1024
LINGER_SECS = 10.0
MAX_INFERENCE_BODY_BYTES = 64 * 1024 * 1024
UPLOAD_ROUTES = frozenset({("POST", "/v1/files")})
"""The routes whose bodies stream to the route (which bounds them itself) instead of being read before it runs."""
INFERENCE_ROUTES = frozenset(("POST", endpoint.value) for endpoint in Endpoint)
"""The routes that read their own bodies, capped at ``MAX_INFERENCE_BODY_BYTES``, once the request is authenticated."""
UPLOAD_RETRY_AFTER_SECS = 5
_SCOPE_KEY = "llama_batches.body"


class RequestTimeoutError(APIError):
    """The client sent nothing of its request body for too long."""

    status = 408
    error_type = "invalid_request_error"


def allow_body(scope: Scope, max_bytes: int) -> None:
    """Let this request's body (``request.scope``) be up to ``max_bytes``: for an upload route, which streams its
    body and bounds what it reads itself. Call it before reading the body."""
    body = scope.get(_SCOPE_KEY)
    if isinstance(body, _Body):
        body.max_bytes = max_bytes


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than {limit} bytes.", code="body_too_large")


def _content_type_problem(scope: Scope) -> InvalidRequestError | None:
    count = sum(1 for name, _ in scope.get("headers") or [] if name.lower() == b"content-type")
    if count <= 1:
        return None
    return InvalidRequestError(
        f"The request has {count} Content-Type headers; send exactly one.", code="invalid_header", param=None
    )


class _Body:
    """One request's body as it is read: counted, capped, timed, and drained or cut off after an early answer."""

    def __init__(self, scope: Scope, receive: Receive, max_bytes: int, idle_secs: float) -> None:
        self._scope = scope
        self._receive = receive
        self.max_bytes = max_bytes
        self.idle_secs = idle_secs
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        self.declared = int(declared) if declared.isdigit() else None
        self.expecting = headers.get(b"expect", b"").lower() == b"100-continue"
        self.received = 0
        # a request without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3): nothing to drain
        self.complete = self.declared == 0 or (self.declared is None and b"transfer-encoding" not in headers)
        self.started = self.replaced = self.asked = self.silent = False
        self.refusal: APIError | None = None  # what the reading ended with: the answer, whatever the route says
        self._waiting = 0  # receives of the route in progress (a streamed answer listens for a disconnect)

    async def _next(self) -> Message:
        self.asked = True  # a server asks an Expect: 100-continue client for its body on the first receive
        if self.complete:  # only a disconnect is left to hear: no hurry
            return await self._receive()
        try:
            async with asyncio.timeout(self.idle_secs):
                message = await self._receive()
        except TimeoutError:
            self.silent = True
            error = RequestTimeoutError(
                f"The request body sent nothing for {self.idle_secs:g} seconds.", code="request_timeout"
            )
            if not self.started:  # the answer, whatever the route makes of it; once answered, just stop reading
                self.refusal = error
            raise error from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        return message

    def _over(self) -> bool:
        return max(self.received, self.declared or 0) > self.max_bytes

    async def receive(self) -> Message:
        """The route's receive: a PayloadTooLargeError once the body is (or says it is) over the cap, until the
        answer starts (after that, only a streamed answer listening for a disconnect reads, and drops what it reads);
        a RequestTimeoutError when the client stays silent."""
        if not self.started and self._over():
            self.refusal = _too_large(self.max_bytes)
            raise self.refusal
        self._waiting += 1
        try:
            message = await self._next()
        finally:
            self._waiting -= 1
        if not self.started and self._over():
            self.refusal = _too_large(self.max_bytes)
            raise self.refusal
        return message

    async def read(self) -> Message | None:
        """The whole body as one message, read before the route runs (None when the client left before its end: no
        route acts on a request that never came whole); raises the 413 or the 408 (its answer)."""
        if self._over():
            raise _too_large(self.max_bytes)
        chunks: list[bytes] = []
        while not self.complete:
            message = await self._next()
            if message["type"] != "http.request":
                return None
            chunks.append(message.get("body", b""))
            if self._over():
                raise _too_large(self.max_bytes)
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    async def _drained(self) -> bool:
        """Read and drop the rest of the body if it is at most ``LINGER_BYTES`` and comes within ``LINGER_SECS``,
        unless reading would invite an ``Expect: 100-continue`` client to send it, or the client went silent."""
        if self._waiting or self.silent or (self.expecting and not self.asked):
            return False  # the route reads it (two readers would wait for each other), or it never comes
        if self.declared is not None and self.declared - self.received > LINGER_BYTES:
            return False  # there is too much
        limit = self.received + LINGER_BYTES
        try:
            async with asyncio.timeout(LINGER_SECS):
                while not self.complete:
                    if (await self._next())["type"] != "http.request" or self.received > limit:
                        return False
        except (TimeoutError, RequestTimeoutError):
            return False
        return True

    def sender(self, send: Send) -> Send:
        """``send`` for the route: an answer that starts before the body is all in drains it or closes (module
        docstring). When reading the body failed (over the cap, silent client), that failure is the answer, whatever
        the route answered (the framework may have turned it into a 400 or a 500); an over-cap body the route did
        not read gets the 413 instead of a success."""

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
                drained = self.complete or await self._drained()
                close = [] if drained else [(b"connection", b"close")]
                if self.refusal is None and self._over() and message["status"] < 400:
                    self.refusal = _too_large(self.max_bytes)
                if self.refusal is not None:
                    self.replaced = True
                    await error_response(self.refusal)(self._scope, self._next, _adding(send, close))
                    return
                message = {**message, "headers": [*message.get("headers", []), *close]}
            if not self.replaced:
                await send(message)

        return sender


def _adding(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sender


def _route_path(scope: Scope) -> str:
    """The path the app routes on (without the ``root_path`` it may be mounted under)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _replaying(first: Message, receive: Receive) -> Receive:
    """``receive`` that gives ``first`` (the body, read already), then what ``receive`` gives (a disconnect)."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class BodyLimit:
    """ASGI middleware: see the module docstring. ``max_bytes`` caps the body of every route but the upload routes
    and the inference routes (``inference_max_bytes``); ``uploads`` is ``server.uploads`` (by default, that of the
    app's stack, ``app.state.stack``)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = MAX_JSON_BODY_BYTES,
        uploads: UploadsConfig | None = None,
        *,
        inference_max_bytes: int = MAX_INFERENCE_BODY_BYTES,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.inference_max_bytes = inference_max_bytes
        self._uploads = uploads
        self.active_uploads = 0

    def _settings(self, scope: Scope) -> UploadsConfig:
        if self._uploads is None:
            stack = getattr(getattr(scope.get("app"), "state", None), "stack", None)
            found = getattr(getattr(getattr(stack, "config", None), "server", None), "uploads", None)
            self._uploads = found if isinstance(found, UploadsConfig) else UploadsConfig()
        return self._uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self._settings(scope)
        body = _Body(scope, receive, self.max_bytes, settings.idle_timeout_s)
        send = body.sender(send)
        problem = _content_type_problem(scope)
        route = (scope.get("method"), _route_path(scope))
        if problem is not None:
            await error_response(problem)(scope, body.receive, send)
        elif route in UPLOAD_ROUTES:
            await self._upload(scope, body, send, settings.max_concurrent_uploads)
        elif route in INFERENCE_ROUTES:  # the route reads it, after authentication; body.receive keeps the cap
            body.max_bytes = self.inference_max_bytes
            await self.app(scope, body.receive, send)
        elif body.complete:
            await self.app(scope, body.receive, send)
        else:
            try:
                message = await body.read()
            except APIError as error:
                await error_response(error)(scope, body.receive, send)
                return
            if message is not None:
                await self.app(scope, _replaying(message, body.receive), send)

    async def _upload(self, scope: Scope, body: _Body, send: Send, limit: int) -> None:
        """The upload route, streaming its body, if fewer than ``limit`` uploads are in progress; else the 429."""
        if self.active_uploads >= limit:
            message = f"The server is receiving {limit} uploads already; try again later."
            error = RateLimitedError(message, code="too_many_uploads", retry_after=UPLOAD_RETRY_AFTER_SECS)
            await error_response(error)(scope, body.receive, send)
            return
        self.active_uploads += 1
        try:
            scope[_SCOPE_KEY] = body
            await self.app(scope, body.receive, send)
        finally:
            self.active_uploads -= 1
