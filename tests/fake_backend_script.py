"""The scripted mode of the fake backend: answers chosen by a test, faults included, played over real HTTP.

A script is ``script(path, body, attempt) -> Scripted | None``: ``body`` is the request's parsed JSON (None when it
is not JSON) and ``attempt`` counts the requests with that identity (see ``FakeBackend.seen``), starting at 1.
Returning None leaves the request to the backend's normal behaviour. A :class:`Scripted` answer is sent as given:
any status, headers and body bytes, after ``delay_s``; or, with ``drop``, the connection is closed without an
answer (the client sees a disconnection)::

    backend.script = lambda path, body, attempt: Scripted(200, b"<html>", content_type="text/html")
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["DROP_HOLD_S", "Script", "Scripted", "play"]

DROP_HOLD_S = 5.0  # a dropped request's handler waits this long to be cancelled (it always is, at once)


@dataclass(frozen=True)
class Scripted:
    """One scripted answer. ``content_type`` None sends no Content-Type of ours (aiohttp then labels a non-empty
    body ``application/octet-stream``); ``headers`` are sent as given after ``x-request-id`` (so they may replace
    it) and must not change the framing (no Content-Length or Transfer-Encoding): ``chunked`` sends the body
    with chunked encoding instead of a Content-Length."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = "application/json"
    delay_s: float = 0.0
    drop: bool = False
    chunked: bool = False


Script = Callable[[str, Any, int], Scripted | None]


async def play(request: web.Request, scripted: Scripted, request_id: str) -> web.StreamResponse:
    """Answer ``request`` as ``scripted`` says (the server must cancel handlers whose connection is lost)."""
    if scripted.delay_s > 0:
        await asyncio.sleep(scripted.delay_s)
    if scripted.drop:
        transport = request.transport
        if transport is not None:
            transport.abort()
        await asyncio.sleep(DROP_HOLD_S)  # cancelled when the server sees the connection lost
        raise web.HTTPServiceUnavailable(reason="the dropped connection was not noticed")
    response = web.Response(status=scripted.status, body=scripted.body)
    if scripted.content_type is not None:
        response.headers["Content-Type"] = scripted.content_type
    response.headers["x-request-id"] = request_id
    response.headers.update(scripted.headers)
    if scripted.chunked:
        response.enable_chunked_encoding()
    return response
