"""Error messages quoting a user's string stay short, printable and storable; strings a store cannot hold (NUL, lone
surrogates) are refused where they enter: custom_id, metadata, idempotency keys."""

from __future__ import annotations

import httpx2
import openai
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_batches.api import BatchError, Endpoint
from llama_batches.errors import InvalidRequestError, NotFoundError, bounded, quoted
from llama_batches.upstream import error_from_sdk
from llama_batches_reference.validation import (
    ParsedLine,
    check_create,
    check_metadata,
    duplicate_custom_id_error,
    model_not_found_error,
    parse_line,
    storable_text,
)

TRICKY = "\x00\n\r\t\u2028\u2029\x85\x7f\u200e\ufeff\ud800\udfff"
any_text = st.text(st.characters(exclude_categories=()) | st.sampled_from(TRICKY), max_size=300)


def _fit_to_store(text: str) -> None:
    text.encode("utf-8")  # no lone surrogate
    assert "\x00" not in text and text.isprintable() and len(text.splitlines()) <= 1


def test_quoted_leaves_a_short_plain_string_as_it_was() -> None:
    assert quoted("batch_123") == "'batch_123'"
    assert quoted("") == "''"
    assert quoted("é ü 日本") == "'é ü 日本'"


def test_quoted_cuts_a_long_string_and_says_how_long_it_was() -> None:
    assert quoted("x" * 65) == "'" + "x" * 64 + "…' (65 characters)"
    assert quoted("x" * 64) == "'" + "x" * 64 + "'"
    assert quoted("abcdef", 3) == "'abc…' (6 characters)"
    assert bounded("abcdef", 3) == "abc… (6 characters)" and bounded("abc", 3) == "abc"


def test_quoted_escapes_what_cannot_be_shown_or_stored() -> None:
    assert quoted("a\x00b") == "'a\\x00b'"
    assert quoted("line\nbreak\ttab\r") == "'line\\nbreak\\ttab\\r'"
    assert quoted("\u2028\u2029\x85") == "'\\u2028\\u2029\\x85'"
    assert quoted("lone \ud800") == "'lone \\ud800'"
    assert quoted("\U000e0001") == "'\\U000e0001'"  # a format character outside the BMP


def test_quoted_bytes_decode_a_prefix_and_count_bytes() -> None:
    assert quoted(b"<html>") == "'<html>'"
    assert quoted(b"\xff\x00ok") == "'\ufffd\\x00ok'"
    assert quoted(b"y" * 10_000_000) == "'" + "y" * 64 + "…' (10000000 bytes)"


@settings(max_examples=500, deadline=None)
@given(text=any_text | st.binary(max_size=300).map(bytes), limit=st.integers(1, 100))
def test_quoted_and_bounded_are_always_short_and_storable(text: str | bytes, limit: int) -> None:
    for rendered in (quoted(text, limit), bounded(text, limit)):
        _fit_to_store(rendered)
        assert len(rendered) <= limit + 40  # the note of the full size included


def test_not_found_quotes_the_id() -> None:
    error = NotFoundError.for_resource("batch", "b\x00" * 1000, param="batch_id")
    _fit_to_store(error.message)
    assert error.message.startswith("No batch found with id 'b\\x00b\\x00") and "(2000 characters)" in error.message


def test_create_checks_quote_the_bad_value() -> None:
    with pytest.raises(InvalidRequestError) as endpoint:
        check_create("/v1/x\x00" + "y" * 10_000, "24h", ["24h"], None)
    with pytest.raises(InvalidRequestError) as window:
        check_create("/v1/embeddings", "\u2028" * 500, ["24h"], None)
    for error, param in ((endpoint.value, "endpoint"), (window.value, "completion_window")):
        assert error.param == param and len(error.message) < 400
        _fit_to_store(error.message)


@pytest.mark.parametrize("key", ["a\x00b", "\x00", "lone \udc80"])
def test_an_idempotency_key_a_store_cannot_hold_is_refused(key: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_create("/v1/chat/completions", "24h", ["24h"], key)
    assert (info.value.status, info.value.param, info.value.code) == (400, "idempotency_key", "invalid_value")
    assert check_create("/v1/chat/completions", "24h", ["24h"], "ok \u2028 key") is Endpoint.chat_completions


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({"a\x00": "v"}, "metadata"),
        ({"\ud800": "v"}, "metadata"),
        ({"k": "v\x00"}, "metadata.k"),
        ({"k": "\udfff"}, "metadata.k"),
    ],
)
def test_metadata_a_store_cannot_hold_is_refused(metadata: dict[str, str], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_metadata(metadata)
    assert (info.value.status, info.value.param) == (400, param)
    _fit_to_store(info.value.message)


def test_metadata_messages_quote_the_key() -> None:
    check_metadata({"k" * 64: "v" * 512, "line\u2028sep": "ok"})
    with pytest.raises(InvalidRequestError) as wrong_type:
        check_metadata({"k\n" * 32: 1})
    assert wrong_type.value.message.startswith("Invalid type for 'metadata.k\\nk\\n") and "\n" not in (
        wrong_type.value.message
    )
    with pytest.raises(InvalidRequestError) as too_long:
        check_metadata({"k": "v" * 513})
    assert too_long.value.param == "metadata.k" and "'metadata.k'" in too_long.value.message


def _line(custom_id: str) -> bytes:
    body = {"model": "m", "messages": []}
    return orjson.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


@pytest.mark.parametrize("custom_id", ["a\x00b", "\x00"])
def test_a_custom_id_holding_nul_is_a_line_error(custom_id: str) -> None:
    error = parse_line(4, _line(custom_id), Endpoint.chat_completions, 10_000)
    assert isinstance(error, BatchError)
    assert (error.code, error.param, error.line) == ("invalid_request", "custom_id", 4)


def test_a_lone_surrogate_custom_id_is_a_line_error() -> None:
    data = b'{"custom_id": "x\\ud800", "method": "POST", "url": "/v1/chat/completions", "body": {}}'
    assert isinstance(parse_line(1, data, Endpoint.chat_completions, 10_000), BatchError)  # not JSON orjson reads
    assert not storable_text("x\ud800") and not storable_text("\x00") and storable_text("é\u2028\x01")


def test_a_custom_id_with_other_characters_is_kept() -> None:
    parsed = parse_line(1, _line("tab\tsep\u2028é"), Endpoint.chat_completions, 10_000)
    assert isinstance(parsed, ParsedLine) and parsed.custom_id == "tab\tsep\u2028é"


def test_the_engine_messages_quote_custom_id_and_model() -> None:
    duplicate = duplicate_custom_id_error(9, "c\x00" * 100)
    assert (duplicate.code, duplicate.param, duplicate.line) == ("duplicate_custom_id", "custom_id", 9)
    assert duplicate.message is not None and duplicate.message.startswith("The custom_id 'c\\x00c\\x00")
    assert "must be unique" in duplicate.message
    missing = model_not_found_error(3, "gpt-x")
    assert (missing.code, missing.param, missing.line) == ("model_not_found", "body.model", 3)
    assert missing.message == "The provided model 'gpt-x' is not supported by the Batch API."
    for error in (duplicate, missing):
        assert error.message is not None
        _fit_to_store(error.message)


def test_an_upstream_error_keeps_a_short_message_and_only_string_codes() -> None:
    request = httpx2.Request("POST", "http://backend/v1/chat/completions")
    body = {"message": "no\x00 " * 2000, "code": {"nested": 1}, "param": 7}
    response = httpx2.Response(400, request=request, json={"error": body})
    error = error_from_sdk(openai.BadRequestError("x", response=response, body=body), "The backend")
    assert error.code is None and error.param is None and len(error.message) < 1100
    _fit_to_store(error.message)


@pytest.mark.parametrize(
    ("value", "kind"), [(None, "null"), (True, "a boolean"), (3, "a number"), (1.5, "a number"), ([], "an array")]
)
def test_a_metadata_value_of_the_wrong_type_is_named_for_what_it_is(value: object, kind: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_metadata({"k": value})
    assert info.value.message.endswith(f"expected a string, but got {kind} instead.")
