"""The error tree: statuses, OpenAI types, structured code/param, messages."""

from __future__ import annotations

import pytest

from llama_batches import errors
from llama_batches.errors import (
    APIError,
    ConfigError,
    ConflictError,
    NotFoundError,
    RateLimitedError,
    UnknownProviderError,
    error_for_status,
)


@pytest.mark.parametrize(
    ("klass", "status", "error_type"),
    [
        (errors.InvalidRequestError, 400, "invalid_request_error"),
        (errors.AuthenticationError, 401, "authentication_error"),
        (errors.PermissionDeniedError, 403, "permission_error"),
        (errors.NotFoundError, 404, "invalid_request_error"),
        (errors.ConflictError, 409, "invalid_request_error"),
        (errors.PayloadTooLargeError, 413, "invalid_request_error"),
        (errors.RateLimitedError, 429, "rate_limit_error"),
        (errors.InternalError, 500, "server_error"),
        (errors.UpstreamError, 502, "upstream_error"),
        (errors.ServiceUnavailableError, 503, "service_unavailable"),
        (errors.UpstreamTimeoutError, 504, "timeout"),
    ],
)
def test_each_api_error_has_its_status_and_openai_type(klass: type[APIError], status: int, error_type: str) -> None:
    error = klass()
    assert (error.status, error.error_type) == (status, error_type)
    assert error.message  # the docstring is the default message
    assert error.to_dict()["error"]["type"] == error_type


def test_the_body_is_openai_shaped_with_code_and_param() -> None:
    error = ConflictError("Idempotency key 'k' was used with other parameters.", code="idempotency_conflict", param="k")
    assert error.to_dict() == {
        "error": {
            "message": "Idempotency key 'k' was used with other parameters.",
            "type": "invalid_request_error",
            "param": "k",
            "code": "idempotency_conflict",
        }
    }


def test_not_found_names_the_resource() -> None:
    error = NotFoundError.for_resource("batch", "batch_123", param="batch_id")
    assert error.message == "No batch found with id 'batch_123'."
    assert (error.code, error.param) == ("not_found", "batch_id")


def test_rate_limited_carries_retry_after() -> None:
    assert RateLimitedError(retry_after=2.5).retry_after == 2.5


@pytest.mark.parametrize(
    ("status", "klass"),
    [(400, errors.InvalidRequestError), (404, NotFoundError), (418, errors.InvalidRequestError),
     (429, RateLimitedError), (500, errors.UpstreamError), (503, errors.ServiceUnavailableError),
     (599, errors.UpstreamError)],
)  # fmt: skip
def test_error_for_status(status: int, klass: type[APIError]) -> None:
    error = error_for_status(status, "m", code="c", param="p")
    assert type(error) is klass
    assert (error.message, error.code, error.param) == ("m", "c", "p")


def test_stack_errors_name_their_path() -> None:
    assert str(ConfigError("providers.files[0].config.x", "bad")) == "providers.files[0].config.x: bad"
    error = UnknownProviderError("files", "inline::nope", ["inline::localfs"], path="providers.files[0].provider_type")
    assert str(error) == (
        "providers.files[0].provider_type: unknown files provider_type 'inline::nope'; known: inline::localfs"
    )
