"""A cap on request bodies that are not uploads: JSON bodies are read whole by the framework, so their size is
bounded before they are (multipart uploads stream to the files provider, which has its own limit)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import PayloadTooLargeError
from .errors import error_response

__all__ = ["MAX_JSON_BODY_BYTES", "BodyLimit"]

MAX_JSON_BODY_BYTES = 1024 * 1024


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"The request body is larger than {limit} bytes.", code="body_too_large")


class BodyLimit:
    """ASGI middleware: a non-multipart body over ``max_bytes`` is a 413, by Content-Length or while it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if headers.get(b"content-type", b"").startswith(b"multipart/form-data"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(_too_large(self.max_bytes))(scope, receive, send)
            return
        body = await self._read(receive)
        if body is None:
            await error_response(_too_large(self.max_bytes))(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body (the framework would read it whole anyway), or None once it passes the cap."""
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` once, then defers to the real one (for disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
