"""Errors of an upstream OpenAI-compatible service, as the openai SDK raises them, mapped onto our error tree with
the upstream's status, code, param and message kept (shared by every provider that calls such a service)."""

from __future__ import annotations

from collections.abc import Mapping

import openai

from .errors import (
    APIError,
    RateLimitedError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    bounded,
    error_for_status,
)

__all__ = ["error_from_sdk", "retry_after", "upstream_field"]


def upstream_field(value: object) -> str | None:
    """A ``code`` or ``param`` of an upstream's error body, kept only when it is a string (then bounded)."""
    return bounded(value, 100) if isinstance(value, str) else None


def error_from_sdk(exc: openai.OpenAIError, where: str) -> APIError:
    """An openai SDK exception as an error of our tree; the backend's status, code and message are kept."""
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeoutError(f"{where} did not answer in time.")
    if isinstance(exc, openai.APIConnectionError):
        return ServiceUnavailableError(f"{where} cannot be reached: {bounded(str(exc))}")
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        message = bounded(str(body.get("message") or exc.message))
        code, param = upstream_field(body.get("code")), upstream_field(body.get("param"))
        if exc.status_code in (401, 403):  # our credentials, not the caller's
            return UpstreamError(f"{where} refused our credentials: {message}", code=code)
        if exc.status_code == 429:
            return RateLimitedError(message, code=code, param=param, retry_after=retry_after(exc.response.headers))
        return error_for_status(exc.status_code, message, code=code, param=param)
    return UpstreamError(f"{where} failed: {bounded(str(exc))}")


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds, when the server gave a number."""
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None
