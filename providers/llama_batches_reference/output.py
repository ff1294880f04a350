"""Output and error lines in OpenAI's shape, built from the backend's answer bytes without re-serialising them."""

from __future__ import annotations

import os
from typing import Any

import orjson

from llama_batches.api import RawResponse
from llama_batches.storage import RequestResult

__all__ = ["error_result", "expired_line", "response_result"]


def _request_id() -> str:
    return "batch_req_" + os.urandom(16).hex()  # a fifth of uuid4's cost, on the hot path


def _head(custom_id: str) -> bytes:
    return b'{"id":"' + _request_id().encode() + b'","custom_id":' + orjson.dumps(custom_id)


def _usage(payload: dict[str, Any]) -> tuple[int, int, int, int]:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return int(prompt), int(completion), int(cached), int(reasoning)


def _object_body(response: RawResponse) -> tuple[bytes, dict[str, Any] | None]:
    """The body bytes if they hold a JSON object (with the parsed object), else an OpenAI error body."""
    try:
        payload = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict):
        return response.body.strip(), payload
    text = response.body[:1000].decode("utf-8", "replace")
    error = {"error": {"message": f"The backend answered with a body that is not a JSON object: {text}"}}
    return orjson.dumps(error | {"type": "upstream_error"}), None


def response_result(batch_id: str, line: int, custom_id: str, response: RawResponse) -> RequestResult:
    """The result of a request the backend answered (success when 2xx with a JSON object body)."""
    body, payload = _object_body(response)
    ok = response.ok and payload is not None
    status = response.status_code if payload is not None or not response.ok else 502
    request_id = response.headers.get("x-request-id") or "req_" + os.urandom(16).hex()
    output = b"".join(
        (
            _head(custom_id),
            b',"response":{"status_code":%d,"request_id":' % status,
            orjson.dumps(request_id),
            b',"body":',
            body,
            b'},"error":null}',
        )
    )
    tokens = _usage(payload) if ok and payload is not None else (0, 0, 0, 0)
    return RequestResult(batch_id, line, custom_id, ok, output, *tokens)


def _error_line(custom_id: str, code: str, message: str) -> bytes:
    error = orjson.dumps({"code": code, "message": message})
    return _head(custom_id) + b',"response":null,"error":' + error + b"}"


def error_result(batch_id: str, line: int, custom_id: str, code: str, message: str) -> RequestResult:
    """The result of a request that got no HTTP answer (connection errors, timeouts after every attempt)."""
    return RequestResult(batch_id, line, custom_id, False, _error_line(custom_id, code, message))


def expired_line(custom_id: str) -> bytes:
    """The error line of a request the batch could not run before its completion window ended."""
    message = "This request could not be executed before the completion window expired."
    return _error_line(custom_id, "batch_expired", message)
