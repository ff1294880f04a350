"""Every error leaves the server in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with its
status; no stack trace ever reaches a client."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from ..config import format_location
from ..errors import (
    APIError,
    ConflictError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    bounded,
    quoted,
)

__all__ = ["error_response", "install_error_handlers"]

logger = logging.getLogger(__name__)


def error_response(error: APIError) -> JSONResponse:
    """The response for ``error``: a final 409 says ``x-should-retry: false`` (the openai SDK retries 409s
    otherwise) and a 429 carries ``Retry-After``."""
    headers: dict[str, str] = {}
    if isinstance(error, ConflictError):
        headers["x-should-retry"] = "false"
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        headers["retry-after"] = str(max(1, round(error.retry_after)))
    return JSONResponse(error.to_dict(), status_code=error.status, headers=headers)


def _validation(exc: RequestValidationError) -> InvalidRequestError:
    first: dict[str, Any] = exc.errors()[0]
    loc = tuple(part for part in first.get("loc", ()) if part not in ("body", "query", "path", "header"))
    param = format_location("", loc) or None
    detail = bounded(str(first.get("msg")), 500)
    message = f"Invalid value for {quoted(param)}: {detail}" if param else detail
    return InvalidRequestError(message, code="invalid_value", param=param)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _method_not_allowed(request: Request) -> JSONResponse:
    """405 with ``Allow``: the methods some route serves on this path (Starlette would name one route's only)."""
    routes: list[BaseRoute] = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    allow = ", ".join(allowed)
    message = f"Method {bounded(request.method, 16)} is not allowed on {bounded(request.url.path, 200)}; use {allow}."
    response = error_response(InvalidRequestError(message, code="method_not_allowed"))
    response.status_code = 405
    response.headers["Allow"] = allow
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception onto an OpenAI-shaped answer."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(
                NotFoundError(
                    f"Unknown route: {bounded(request.method, 16)} {bounded(request.url.path, 200)}",
                    code="unknown_url",
                )
            )
        if exc.status_code == 405:
            return _method_not_allowed(request)
        error = InvalidRequestError(bounded(str(exc.detail), 500), code="invalid_request")
        response = error_response(error)
        response.status_code = exc.status_code
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(InternalError("The server had an error while processing your request."))
