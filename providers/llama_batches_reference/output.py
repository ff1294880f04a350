"""Output and error lines in OpenAI's shape.

A backend's answer is untrusted input: whatever its status, headers and bytes, a request ends as exactly one line of
valid JSON, ``{"id", "custom_id", "response", "error"}``. A 2xx whose body is a JSON object is a success; its bytes
are spliced into the line unchanged when they are already one line (the common case, and the cheap one), else
re-serialised compactly. Every other answer is a failure that keeps the status and the ``x-request-id``: a body that
is a JSON object is kept as the backend's error body, any other body is replaced by an OpenAI error body whose
``code`` says what was wrong (``invalid_response`` for a 2xx, ``http_error`` otherwise) and which quotes a short,
sanitised prefix of it. A failure also carries ``error: {code, message}`` (from the body's OpenAI error, else from
the status), where llama-stack's clients read the reason; OpenAI's clients read it from the body. U+2028, U+2029
and U+0085 are escaped wherever they occur, because ``str.splitlines()`` (which readers of JSONL use) splits on
them.
"""

from __future__ import annotations

import os
import re
from typing import Any

import orjson

from llama_batches.api import RawResponse
from llama_batches.errors import bounded, quoted
from llama_batches.storage import RequestResult

__all__ = ["MAX_REQUEST_ID", "MAX_USAGE_TOKENS", "error_result", "expired_line", "response_result"]

MAX_USAGE_TOKENS = 10**9  # one request's count above this is not believed (and sums stay far from BIGINT's limit)
MAX_REQUEST_ID = 128
_MAX_MESSAGE = 1000
_MAX_CODE = 64
_NOT_IN_CODE = re.compile(r"[^A-Za-z0-9_.:-]")
_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def _one_line(data: bytes) -> bytes:
    """Valid UTF-8 JSON with the line separators other than LF and CR escaped. In valid JSON they can only occur
    raw inside strings, where the escape means the same character, so a byte replacement is exact. (Callers check
    ``isascii`` first; then the decoded text is searched, much faster than the bytes for three sequences.)"""
    text = data.decode("utf-8", "replace")
    if "\u2028" in text or "\u2029" in text or "\x85" in text:
        for raw, escaped in _SEPARATORS:
            data = data.replace(raw, escaped)
    return data


def _json_str(text: str) -> bytes:
    """``text`` as a JSON string; a lone surrogate (which UTF-8 cannot carry) is written as its escape's text."""
    return orjson.dumps(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _head(custom_id: str) -> bytes:
    try:
        custom = orjson.dumps(custom_id)
    except orjson.JSONEncodeError:
        custom = _json_str(custom_id)
    return b'{"id":"batch_req_' + os.urandom(16).hex().encode() + b'","custom_id":' + custom


def _usage(payload: dict[str, Any]) -> tuple[int, int, int, int]:
    """(prompt, completion, cached, reasoning) tokens. A count is believed only when it is a plain int (not a bool)
    in [0, MAX_USAGE_TOKENS]; any other value counts 0 (written inline: this runs once per request)."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return 0, 0, 0, 0
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else 0
    top = MAX_USAGE_TOKENS
    return (
        prompt if type(prompt) is int and 0 <= prompt <= top else 0,
        completion if type(completion) is int and 0 <= completion <= top else 0,
        cached if type(cached) is int and 0 <= cached <= top else 0,
        reasoning if type(reasoning) is int and 0 <= reasoning <= top else 0,
    )


def _clean_request_id(value: object) -> str:
    """An ``x-request-id`` that is not a short, non-empty, printable ASCII string: its printable ASCII characters
    cut to MAX_REQUEST_ID, or one of ours when none is left (or there was none)."""
    if isinstance(value, str):
        kept = "".join(c for c in value[: MAX_REQUEST_ID * 8] if c.isascii() and c.isprintable()).strip()
        if kept:
            return kept[:MAX_REQUEST_ID]
    return "req_" + os.urandom(16).hex()


def _compact(body: bytes, payload: dict[str, Any]) -> bytes:
    """A JSON object body that spans lines, re-serialised as one compact line."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: LF and CR are only whitespace in JSON
        return body.replace(b"\n", b"").replace(b"\r", b"")


def _error_body(response: RawResponse) -> tuple[bytes, str, str]:
    """An OpenAI error body standing for a body that is not a JSON object, quoting its start; with its code and
    message (for the line's ``error``)."""
    code = "invalid_response" if response.ok else "http_error"
    content = response.body
    described = f"a body that is not a JSON object: {quoted(content)}" if content.strip() else "an empty body"
    message = f"The backend answered HTTP {response.status_code} with {described}."
    error = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
    return orjson.dumps(error), code, message


def _reason(status: int, payload: dict[str, Any]) -> tuple[str, str]:
    """The code and message of a failed answer whose body is a JSON object: its OpenAI ``error`` (its ``code``, else
    its ``type``), or the status when it has none."""
    error = payload.get("error")
    found = error if isinstance(error, dict) else {}
    code = next((found[k] for k in ("code", "type") if isinstance(found.get(k), str) and found[k]), "http_error")
    message = found.get("message")
    if not isinstance(message, str) or not message:
        message = f"The backend answered HTTP {status}."
    return code, message


def _error_object(code: str, message: str) -> bytes:
    """``{"code", "message"}``: the code kept a short identifier, the message cut short and printable."""
    code = _NOT_IN_CODE.sub("_", code[:_MAX_CODE]) or "error"
    return orjson.dumps({"code": code, "message": bounded(message, _MAX_MESSAGE)})


def response_result(
    batch_id: str, line: int, custom_id: str, response: RawResponse, *, body_as_string: bool = False
) -> RequestResult:
    """The result of a request the backend answered: a success when 2xx with a JSON object body, else a failure
    that keeps the status; always exactly one line of valid JSON. ``body_as_string`` writes the body as a JSON
    string holding the object (llama-stack's ``inline::reference`` does) instead of OpenAI's object. The checks of
    the success path are written inline, each the cheapest found (``find`` over ``in``, ``isascii`` first): this
    runs once per request."""
    try:
        payload = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        payload = None
    status = response.status_code
    error = b"null"
    if isinstance(payload, dict):
        body, ok = response.body.strip(), 200 <= status < 300
        if body.find(b"\n") >= 0 or body.find(b"\r") >= 0:
            body = _compact(body, payload)
        if not ok:  # llama-stack's clients read the reason from `error`; OpenAI's from the body: both are there
            error = _error_object(*_reason(status, payload))
    else:
        body, code, message = _error_body(response)
        ok, payload, error = False, None, _error_object(code, message)
    if body_as_string:
        body = orjson.dumps(body.decode())
    request_id = response.headers.get("x-request-id")
    if not (
        isinstance(request_id, str)
        and 0 < len(request_id) <= MAX_REQUEST_ID
        and request_id.isascii()
        and request_id.isprintable()
    ):
        request_id = _clean_request_id(request_id)
    output = b"".join(
        (
            _head(custom_id),  # its id costs a fifth of uuid4's, on the hot path
            b',"response":{"status_code":%d,"request_id":' % status,
            orjson.dumps(request_id),
            b',"body":',
            body,
            b'},"error":',
            error,
            b"}",
        )
    )
    if not output.isascii():
        output = _one_line(output)
    tokens = _usage(payload) if ok and payload is not None else (0, 0, 0, 0)
    return RequestResult(batch_id, line, custom_id, ok, output, *tokens)


def _error_line(custom_id: str, code: str, message: str) -> bytes:
    """A line with ``response: null`` and the ``error`` object."""
    line = _head(custom_id) + b',"response":null,"error":' + _error_object(code, message) + b"}"
    return line if line.isascii() else _one_line(line)


def error_result(batch_id: str, line: int, custom_id: str, code: str, message: str) -> RequestResult:
    """The result of a request that got no usable HTTP answer (connection errors, timeouts after every attempt, an
    answer over the size cap, our own failure); ``code`` and ``message`` are cut short and made printable."""
    return RequestResult(batch_id, line, custom_id, False, _error_line(custom_id, code, message))


def expired_line(custom_id: str) -> bytes:
    """The error line of a request the batch could not run before its completion window ended."""
    message = "This request could not be executed before the completion window expired."
    return _error_line(custom_id, "batch_expired", message)
