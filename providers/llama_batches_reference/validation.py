"""Validation: the create call's parameters (400 before anything is stored) and each input line (per-line errors
with OpenAI's codes, collected while streaming the file)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llama_batches.api import BatchError, Endpoint
from llama_batches.errors import InvalidRequestError, quoted
from llama_batches.idempotency import check_key

__all__ = [
    "ParsedLine",
    "check_create",
    "check_metadata",
    "duplicate_custom_id_error",
    "mismatched_model_error",
    "model_not_found_error",
    "parse_line",
    "storable_text",
]

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
_REQUIRED_BY_ENDPOINT = {
    Endpoint.chat_completions: ("messages", "Messages parameter is required."),
    Endpoint.completions: ("prompt", "Prompt parameter is required."),
    Endpoint.embeddings: ("input", "Input parameter is required."),
}
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> bool:
    """Whether every store can hold ``text`` as text: PostgreSQL refuses NUL, and no UTF-8 column (nor SQLite's
    driver) takes a lone surrogate, which Python's json module lets through."""
    return _UNSTORABLE.search(text) is None


def _invalid(message: str, param: str, code: str = "invalid_value") -> InvalidRequestError:
    return InvalidRequestError(message, code=code, param=param)


def check_create(endpoint: str, completion_window: str, windows: list[str], idempotency_key: str | None) -> Endpoint:
    """The endpoint as an Endpoint; raises InvalidRequestError naming the field for any bad parameter."""
    try:
        target = Endpoint(endpoint)
    except ValueError:
        allowed = ", ".join(f"'{e.value}'" for e in Endpoint)
        raise _invalid(f"Invalid value: {quoted(endpoint)}. Supported values are: {allowed}.", "endpoint") from None
    if completion_window not in windows:
        allowed = ", ".join(f"'{w}'" for w in windows)
        raise _invalid(
            f"Invalid value for 'completion_window': {quoted(completion_window)}. Supported values are: {allowed}.",
            "completion_window",
        )
    if idempotency_key is not None:
        check_key(idempotency_key)
    return target


_KINDS: dict[type, str] = {list: "an array", dict: "an object", type(None): "null", bool: "a boolean"}


def check_metadata(metadata: Mapping[str, Any] | None) -> None:
    """OpenAI's metadata rules: at most 16 pairs, keys <= 64 characters, string values <= 512 characters."""
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise _invalid("Invalid type for 'metadata': expected an object.", "metadata", "invalid_type")
    if len(metadata) > MAX_METADATA_PAIRS:
        raise _invalid(
            f"Invalid 'metadata': too many properties. Expected an object with at most {MAX_METADATA_PAIRS} "
            f"properties, but got an object with {len(metadata)} properties instead.",
            "metadata",
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        _check_metadata_pair(key, value)


def _check_metadata_pair(key: object, value: object) -> None:
    """One pair: a short storable string key, a short storable string value; the message quotes the key."""
    if not isinstance(key, str) or len(key) > MAX_METADATA_KEY:
        raise _invalid(
            f"Invalid 'metadata': keys must be strings of at most {MAX_METADATA_KEY} characters.",
            "metadata",
            "string_above_max_length",
        )
    if not storable_text(key):
        raise _invalid(f"Invalid 'metadata': the key {quoted(key)} holds NUL or a lone surrogate.", "metadata")
    name = quoted(f"metadata.{key}", len("metadata.") + MAX_METADATA_KEY)
    if not isinstance(value, str):
        kind = _KINDS.get(type(value), "a number")
        raise _invalid(
            f"Invalid type for {name}: expected a string, but got {kind} instead.", f"metadata.{key}", "invalid_type"
        )
    if len(value) > MAX_METADATA_VALUE:
        raise _invalid(
            f"Invalid {name}: string too long. Expected a string with maximum length "
            f"{MAX_METADATA_VALUE}, but got a string with length {len(value)} instead.",
            f"metadata.{key}",
            "string_above_max_length",
        )
    if not storable_text(value):
        raise _invalid(f"Invalid {name}: the value holds NUL or a lone surrogate.", f"metadata.{key}")


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """A valid request line."""

    number: int
    custom_id: str
    model: str
    body: dict[str, Any]


def _error(number: int, code: str, message: str, param: str | None = None) -> BatchError:
    return BatchError(code=code, message=message, param=param, line=number)


def parse_line(number: int, data: bytes | None, endpoint: Endpoint, max_line_bytes: int) -> ParsedLine | BatchError:
    """The request on line ``number``, or the BatchError that makes it invalid (model existence and duplicate
    custom_ids are checked by the caller, which sees every line)."""
    if data is None:
        return _error(number, "line_too_large", f"This line is larger than the limit of {max_line_bytes} bytes.")
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        return _error(number, "invalid_json_line", "This line is not parseable as valid JSON.")
    for field in ("custom_id", "method", "url", "body"):
        if field not in parsed:
            return _error(number, "missing_required_parameter", f"Missing required parameter: '{field}'.", field)
    return _check_request(number, parsed, endpoint)


def _check_request(number: int, parsed: dict[str, Any], endpoint: Endpoint) -> ParsedLine | BatchError:
    custom_id, body = parsed["custom_id"], parsed["body"]
    if not isinstance(custom_id, str) or not custom_id:
        return _error(number, "invalid_request", "custom_id must be a non-empty string.", "custom_id")
    if not storable_text(custom_id):
        message = "custom_id cannot hold NUL characters or lone surrogates."
        return _error(number, "invalid_request", message, "custom_id")
    if parsed["method"] != "POST":
        return _error(number, "invalid_request", "The method must be 'POST'.", "method")
    if parsed["url"] != endpoint.value:
        return _error(
            number, "invalid_url", "The URL provided for this request does not match the batch endpoint.", "url"
        )
    if not isinstance(body, dict):
        return _error(number, "invalid_request", "The body must be a JSON object.", "body")
    if body.get("stream"):
        return _error(number, "streaming_unsupported", "Streaming is not supported in the Batch API.", "body.stream")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _error(number, "invalid_request", "Model parameter is required.", "body.model")
    field, message = _REQUIRED_BY_ENDPOINT[endpoint]
    if field not in body:
        return _error(number, "invalid_request", message, f"body.{field}")
    return ParsedLine(number, custom_id, model, body)


def duplicate_custom_id_error(number: int, custom_id: str) -> BatchError:
    """The error of line ``number``, whose ``custom_id`` an earlier line already used (OpenAI's wording)."""
    message = (
        f"The custom_id {quoted(custom_id)} for this request is a duplicate of another request. "
        "The custom_id parameter must be unique for each request in a batch."
    )
    return _error(number, "duplicate_custom_id", message, "custom_id")


def mismatched_model_error(number: int, model: str) -> BatchError:
    """The error of line ``number``, whose ``body.model`` differs from the batch's (OpenAI's wording): a batch runs
    one model."""
    message = (
        f"The model {quoted(model)} for this request does not match the rest of the batch. "
        "Each batch must contain requests for a single model."
    )
    return _error(number, "mismatched_model", message, "body.model")


def model_not_found_error(number: int, model: str) -> BatchError:
    """The error of line ``number``, whose ``body.model`` no inference provider serves (OpenAI's wording)."""
    message = f"The provided model {quoted(model)} is not supported by the Batch API."
    return _error(number, "model_not_found", message, "body.model")
