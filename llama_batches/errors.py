"""The typed error tree of llama-batches.

Every error a caller can see is one of these. API errors carry the HTTP status, the OpenAI error ``type`` and the
optional ``code`` and ``param`` as fields, so nothing ever parses a message to learn what went wrong::

    LlamaBatchesError
    +-- APIError                       (status, type, code, param; rendered as OpenAI's {"error": {...}})
    |   +-- InvalidRequestError        400 invalid_request_error
    |   +-- AuthenticationError        401 authentication_error
    |   +-- PermissionDeniedError      403 permission_error
    |   +-- NotFoundError              404 invalid_request_error
    |   +-- ConflictError              409 invalid_request_error
    |   +-- PayloadTooLargeError       413 invalid_request_error
    |   +-- RateLimitedError           429 rate_limit_error (retry_after)
    |   +-- InternalError              500 server_error
    |   +-- UpstreamError              502 upstream_error (a backend answered badly)
    |   +-- ServiceUnavailableError    503 service_unavailable (a backend cannot be reached)
    |   +-- UpstreamTimeoutError       504 timeout (a backend did not answer in time)
    +-- StackError                     building a stack went wrong (never an HTTP answer to a client)
        +-- ConfigError                a config value is wrong; names its path (providers.files[0].config.x)
        +-- UnknownProviderError       an unknown provider_type; lists the known ones
        +-- MissingExtraError          an optional dependency is missing; says what to pip install
        +-- ProtocolComplianceError    a provider lacks methods of its API; names provider, API and every method
        +-- DependencyError            a missing API dependency or a dependency cycle
        +-- ProviderRegistrationError  two providers claim the same (api, provider_type)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = [
    "APIError",
    "AuthenticationError",
    "ConfigError",
    "ConflictError",
    "DependencyError",
    "InternalError",
    "InvalidRequestError",
    "LlamaBatchesError",
    "MissingExtraError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "ProtocolComplianceError",
    "ProviderRegistrationError",
    "RateLimitedError",
    "ServiceUnavailableError",
    "StackError",
    "UnknownProviderError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "error_for_status",
]


class LlamaBatchesError(Exception):
    """Something went wrong in llama-batches."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or type(self).__name__).strip()
        super().__init__(self.message)


class APIError(LlamaBatchesError):
    """The request could not be served."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"

    def __init__(self, message: str | None = None, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param

    def to_dict(self) -> dict[str, Any]:
        """The error as OpenAI's response body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


class InvalidRequestError(APIError):
    """The request is not valid."""

    status = 400
    error_type = "invalid_request_error"


class AuthenticationError(APIError):
    """A valid API key or token is required."""

    status = 401
    error_type = "authentication_error"


class PermissionDeniedError(APIError):
    """You are not allowed to do this."""

    status = 403
    error_type = "permission_error"


class NotFoundError(APIError):
    """The resource does not exist."""

    status = 404
    error_type = "invalid_request_error"

    @classmethod
    def for_resource(cls, kind: str, resource_id: str, *, param: str | None = None) -> NotFoundError:
        """The standard message for a missing ``kind`` (``batch``, ``file``, ``model``) with ``resource_id``."""
        return cls(f"No {kind} found with id '{resource_id}'.", code="not_found", param=param)


class ConflictError(APIError):
    """The request conflicts with the current state of the resource."""

    status = 409
    error_type = "invalid_request_error"


class PayloadTooLargeError(APIError):
    """The request body is too large."""

    status = 413
    error_type = "invalid_request_error"


class RateLimitedError(APIError):
    """Too many requests; try again later."""

    status = 429
    error_type = "rate_limit_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param)
        self.retry_after = retry_after


class InternalError(APIError):
    """The server failed to serve the request."""


class UpstreamError(APIError):
    """An upstream service answered with an error."""

    status = 502
    error_type = "upstream_error"


class ServiceUnavailableError(APIError):
    """An upstream service cannot be reached."""

    status = 503
    error_type = "service_unavailable"


class UpstreamTimeoutError(APIError):
    """An upstream service did not answer in time."""

    status = 504
    error_type = "timeout"


class StackError(LlamaBatchesError):
    """The stack could not be built."""


class ConfigError(StackError):
    """The configuration is not valid."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class UnknownProviderError(StackError):
    """No provider is registered under that provider_type."""

    def __init__(self, api: str, provider_type: str, known: Sequence[str], *, path: str = "") -> None:
        self.api = api
        self.provider_type = provider_type
        self.known = tuple(known)
        self.path = path
        where = f"{path}: " if path else ""
        listed = ", ".join(self.known) if self.known else "(none)"
        super().__init__(f"{where}unknown {api} provider_type '{provider_type}'; known: {listed}")


class MissingExtraError(StackError):
    """A provider needs an optional dependency that is not installed."""

    def __init__(self, provider_type: str, missing: str, install_hint: str) -> None:
        self.provider_type = provider_type
        self.missing = missing
        self.install_hint = install_hint
        super().__init__(f"provider '{provider_type}' needs '{missing}', which is not installed: {install_hint}")


class ProtocolComplianceError(StackError):
    """A provider does not implement every method of its API."""

    def __init__(self, provider_type: str, api: str, problems: Sequence[str]) -> None:
        self.provider_type = provider_type
        self.api = api
        self.problems = tuple(problems)
        super().__init__(f"provider '{provider_type}' does not implement the {api} API: " + "; ".join(self.problems))


class DependencyError(StackError):
    """An API dependency is missing or dependencies form a cycle."""


class ProviderRegistrationError(StackError):
    """A provider could not be registered."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitedError,
    502: UpstreamError,
    503: ServiceUnavailableError,
    504: UpstreamTimeoutError,
}


def error_for_status(
    status: int, message: str | None = None, *, code: str | None = None, param: str | None = None
) -> APIError:
    """The error of the tree for an HTTP ``status`` (another 4xx is a 400, another 5xx a 502)."""
    klass = _BY_STATUS.get(status) or (InvalidRequestError if 400 <= status < 500 else UpstreamError)
    return klass(message, code=code, param=param)
