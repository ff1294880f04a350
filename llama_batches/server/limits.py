"""Request bodies are bounded by the route they are sent to, never by what the request's headers say.

Every request's body is capped at ``MAX_JSON_BODY_BYTES``, whatever its ``Content-Type`` (multipart included): the
cap is enforced on the bytes as the route reads them (and on ``Content-Length`` before the first is read), so a JSON
body the framework reads whole is bounded before it is parsed. The one route that takes uploads raises the cap of its
own request with :func:`allow_body`, when it starts reading, and bounds what it reads itself (:mod:`.uploads`). A
body over the cap is a 413 ``body_too_large``, whatever the route made of the error, and also when the route does
not read its body at all (``GET`` with a body). A request with more than one ``Content-Type`` header is a 400: the
framework and a route could read different ones.

When a route answers before the whole body has arrived (a 413, a 400 on the first bad part, a route that reads no
body), the rest of the body is read and dropped before the answer if it is little (at most ``LINGER_BYTES``, within
``LINGER_SECS``): many clients (httpx, so the openai SDK) read an answer only once they have sent everything, and see
a reset connection instead of the error when the server closes while they write. When the rest is more than that (by
``Content-Length``, or as it comes), the answer says ``Connection: close`` and the server closes the connection
instead of reading on; a client that reads while it sends, or that sent ``Expect: 100-continue``, still gets it.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidRequestError, PayloadTooLargeError
from .errors import error_response

__all__ = ["LINGER_BYTES", "LINGER_SECS", "MAX_JSON_BODY_BYTES", "BodyLimit", "allow_body"]

MAX_JSON_BODY_BYTES = 1024 * 1024
LINGER_BYTES = 64 * 1024 * 1024
LINGER_SECS = 10.0
_SCOPE_KEY = "llama_batches.body"


def allow_body(scope: Scope, max_bytes: int) -> None:
    """Let this request's body (``request.scope``) be up to ``max_bytes``: for a route that streams its body and
    bounds what it reads itself. Call it before reading the body."""
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
    """One request's body as the route reads it: counted, capped, and drained or cut off after an early answer."""

    def __init__(self, scope: Scope, receive: Receive, max_bytes: int) -> None:
        self._scope = scope
        self._receive = receive
        self.max_bytes = max_bytes
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        self.declared = int(declared) if declared.isdigit() else None
        self.received = 0
        # a request without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3): nothing to drain
        self.complete = self.declared == 0 or (self.declared is None and b"transfer-encoding" not in headers)
        self.too_large = self.replaced = self.started = False
        self._waiting = 0  # receives of the route in progress (a streamed answer listens for a disconnect)

    async def _next(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        return message

    async def receive(self) -> Message:
        """The route's receive: a PayloadTooLargeError once the body is (or says it is) over the cap, until the
        answer starts (after that, only a streamed answer listening for a disconnect reads, and drops what it reads)."""
        if not self.started and self.declared is not None and self.declared > self.max_bytes:
            self.too_large = True
            raise _too_large(self.max_bytes)
        self._waiting += 1
        try:
            message = await self._next()
        finally:
            self._waiting -= 1
        if not self.started and self.received > self.max_bytes:
            self.too_large = True
            raise _too_large(self.max_bytes)
        return message

    async def _drained(self) -> bool:
        """Read and drop the rest of the body if it is at most ``LINGER_BYTES`` and comes within ``LINGER_SECS``."""
        if self._waiting or (self.declared is not None and self.declared - self.received > LINGER_BYTES):
            return False  # the route reads it (two readers would wait for each other), or there is too much
        limit = self.received + LINGER_BYTES
        try:
            async with asyncio.timeout(LINGER_SECS):
                while not self.complete:
                    if (await self._next())["type"] != "http.request" or self.received > limit:
                        return False
        except TimeoutError:
            return False
        return True

    def sender(self, send: Send) -> Send:
        """``send`` for the route: an answer that starts before the body is all in drains it or closes (module
        docstring). A body over the cap is answered with the 413: when the route read past the cap, whatever it
        answered (the framework may have turned the error into a 400); when it did not read it, instead of a
        success."""

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.started = True
                drained = self.complete or await self._drained()
                close = [] if drained else [(b"connection", b"close")]
                over = max(self.received, self.declared or 0) > self.max_bytes and message["status"] < 400
                if self.too_large or over:  # over: a route that answered without reading a body too large
                    self.replaced = True
                    await error_response(_too_large(self.max_bytes))(self._scope, self._next, _adding(send, close))
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


class BodyLimit:
    """ASGI middleware: see the module docstring. ``max_bytes`` caps the body of every route that does not raise
    its own cap with :func:`allow_body`."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = _Body(scope, receive, self.max_bytes)
        problem = _content_type_problem(scope)
        if problem is not None:
            await error_response(problem)(scope, body.receive, body.sender(send))
            return
        scope[_SCOPE_KEY] = body
        await self.app(scope, body.receive, body.sender(send))
