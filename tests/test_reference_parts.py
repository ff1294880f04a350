"""Units of the reference engine: line splitting, fingerprints, output lines, create-time checks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from llama_batches.api import Endpoint, OutputExpiresAfter, RawResponse
from llama_batches.errors import InvalidRequestError
from llama_batches_reference.config import ReferenceBatchesImplConfig
from llama_batches_reference.lines import InputLine, InputTooLarge, iter_lines
from llama_batches_reference.output import error_result, expired_line, response_result
from llama_batches_reference.records import CreateParams, batch_id_for, window_seconds
from llama_batches_reference.validation import check_create, parse_line


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _lines(data: bytes, size: int, max_line: int = 100, max_bytes: int = 10_000) -> list[InputLine]:
    return [line async for line in iter_lines(_chunks(data, size), max_line_bytes=max_line, max_bytes=max_bytes)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1000])
async def test_lines_are_the_same_whatever_the_chunking(chunk: int) -> None:
    data = b'{"a": 1}\n\n{"b": 2}\r\n' + b"x" * 150 + b'\n{"c": 3}'
    assert await _lines(data, chunk) == [
        InputLine(1, b'{"a": 1}'),
        InputLine(3, b'{"b": 2}\r'),
        InputLine(4, None),  # over max_line_bytes: reported, not held
        InputLine(5, b'{"c": 3}'),
    ]


async def test_an_oversized_last_line_is_reported() -> None:
    assert await _lines(b"ok\n" + b"y" * 500, 64) == [InputLine(1, b"ok"), InputLine(2, None)]


async def test_a_stream_over_the_byte_limit_stops() -> None:
    with pytest.raises(InputTooLarge):
        await _lines(b"a\n" * 100, 10, max_bytes=50)


def _params(**change: object) -> CreateParams:
    base: dict[str, object] = {
        "input_file_id": "file-1",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"a": "1", "b": "2"},
        "output_expires_after": None,
    }
    return CreateParams.model_validate(base | change)


def test_the_fingerprint_ignores_metadata_order_but_not_none_versus_empty() -> None:
    assert _params().fingerprint() == _params(metadata={"b": "2", "a": "1"}).fingerprint()
    assert _params(metadata=None).fingerprint() != _params(metadata={}).fingerprint()
    assert _params().fingerprint() != _params(output_expires_after=OutputExpiresAfter(seconds=3600)).fingerprint()


def test_batch_ids_derive_from_principal_and_key() -> None:
    assert batch_id_for("alice", "k") == batch_id_for("alice", "k")
    assert batch_id_for("alice", "k") != batch_id_for("bob", "k")
    assert batch_id_for("alice", None) != batch_id_for("alice", None)
    assert window_seconds("24h") == 86400 and window_seconds("7d") == 604800 and window_seconds("90m") == 5400


def test_completion_windows_must_be_durations() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        ReferenceBatchesImplConfig.model_validate({"kvstore": {"backend": "b"}, "completion_windows": ["soon"]})


def test_create_checks_name_the_field() -> None:
    assert check_create("/v1/embeddings", "24h", ["24h"], None) is Endpoint.embeddings
    with pytest.raises(InvalidRequestError) as info:
        check_create("/v1/chat/completions", "24h", ["24h"], "k" * 256)
    assert info.value.param == "idempotency_key"


def test_a_success_line_splices_the_backend_body_unchanged() -> None:
    body = b'{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}}}'
    result = response_result("batch_1", 7, "c-7", RawResponse(200, body, {"x-request-id": "req_9"}))
    line = json.loads(result.output)
    assert result.ok and (result.line, result.custom_id) == (7, "c-7")
    assert (result.input_tokens, result.output_tokens, result.cached_tokens) == (3, 4, 1)
    assert line["response"] == {"status_code": 200, "request_id": "req_9", "body": json.loads(body)}
    assert line["error"] is None and line["id"].startswith("batch_req_")
    assert body in result.output  # spliced, not re-serialised


def test_a_2xx_that_is_not_a_json_object_is_a_failure() -> None:
    result = response_result("batch_1", 1, "c", RawResponse(200, b"<html>oops</html>"))
    line = json.loads(result.output)
    assert not result.ok and line["response"]["status_code"] == 200  # the status is kept; the code says why
    error = line["response"]["body"]["error"]
    assert error["code"] == "invalid_response" and error["type"] == "upstream_error"
    assert "not a JSON object: '<html>oops</html>'" in error["message"]
    assert line["error"] == {"code": "invalid_response", "message": error["message"]}  # for llama-stack's clients


def test_an_http_failure_keeps_the_response() -> None:
    body = b'{"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}}'
    line = json.loads(response_result("batch_1", 1, "c", RawResponse(400, body)).output)
    assert line["response"]["status_code"] == 400 and line["response"]["body"]["error"]["message"] == "bad"
    assert line["error"] == {"code": "invalid_request_error", "message": "bad"}  # the type, when no code


def test_an_http_failure_gives_its_code_and_message_to_the_error_object_too() -> None:
    body = b'{"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}}'
    line = json.loads(response_result("batch_1", 1, "c", RawResponse(400, body)).output)
    assert line["error"] == {"code": "context_length_exceeded", "message": "too long"}
    bare = json.loads(response_result("batch_1", 1, "c", RawResponse(503, b'{"detail": "busy"}')).output)
    assert bare["error"] == {"code": "http_error", "message": "The backend answered HTTP 503."}


def test_non_http_failures_and_expiry_have_no_response() -> None:
    failed = json.loads(error_result("batch_1", 1, "c", "service_unavailable", "down").output)
    assert failed["response"] is None and failed["error"] == {"code": "service_unavailable", "message": "down"}
    expired = json.loads(expired_line("c"))
    assert expired["error"]["code"] == "batch_expired" and expired["custom_id"] == "c"


def test_parse_line_refuses_a_method_other_than_post() -> None:
    line = b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}'
    error = parse_line(3, line, Endpoint.chat_completions, 1000)
    assert not hasattr(error, "body") and error.param == "method" and error.line == 3
