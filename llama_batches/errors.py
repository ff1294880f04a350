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
        +-- ProviderRegistrationError  an invalid spec, or two providers claim the same (api, provider_type)
        |   +-- BrokenProviderError    a config uses a provider of a skipped plugin; says which and why
        |                              (defined in :mod:`llama_batches.registry`, beside the plugin it names)
        +-- SchemaVersionError         a table's schema version does not fit this release
            +-- SchemaTooNewError      migrated by a newer release
            +-- SchemaOutdatedError    behind, and its backend says auto_migrate: false
                                       (the three in :mod:`llama_batches.storage.schema`, beside the versions)

A user's string quoted in a message goes through :func:`quoted` (and any other free text of unknown origin through
:func:`bounded`): messages stay short, printable and storable anywhere (PostgreSQL text cannot hold NUL).
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
    "bounded",
    "error_for_status",
    "quoted",
]

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _shown(text: str | bytes, limit: int) -> tuple[str, str | None]:
    """``text`` made printable (every character ``str.isprintable`` refuses escaped: NUL and other controls, line
    and paragraph separators, format characters, lone surrogates) and cut to at most ``limit`` characters once
    escaped; with the full size when it was cut. Bytes are decoded as UTF-8, with replacement, from a prefix."""
    if isinstance(text, bytes):
        head = text[: limit * 4]  # at least ``limit`` characters once decoded, when the bytes are longer
        chars, size, complete = head.decode("utf-8", "replace"), f"{len(text)} bytes", len(head) == len(text)
    else:
        chars, size, complete = text, f"{len(text)} characters", True
    if complete and len(chars) <= limit and chars.isprintable():
        return chars, None
    pieces: list[str] = []
    used = 0
    for char in chars[:limit]:
        piece = char if char.isprintable() else _escape(char)
        if used + len(piece) > limit:
            break
        pieces.append(piece)
        used += len(piece)
    cut = len(pieces) < len(chars) or not complete
    return "".join(pieces), size if cut else None


def bounded(text: str | bytes, limit: int = 1000) -> str:
    """Free text of unknown origin (an exception's message, a backend's body) made fit for an error message: control
    characters and lone surrogates escaped, at most ``limit`` characters shown, and, when cut, an ellipsis and the
    full size (``abc… (5000 characters)``); bytes are decoded as UTF-8 with replacement."""
    shown, size = _shown(text, limit)
    return f"{shown}… ({size})" if size else shown


def quoted(text: str | bytes, limit: int = 64) -> str:
    """A user's string quoted in an error message: ``'value'``, or ``'valu…' (5000 characters)`` when longer than
    ``limit`` once NUL, other control characters and lone surrogates are escaped, so that a message quoting any
    input stays short and can be stored anywhere (bytes are decoded as UTF-8 with replacement)."""
    shown, size = _shown(text, limit)
    return f"'{shown}…' ({size})" if size else f"'{shown}'"


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
        return cls(f"No {kind} found with id {quoted(resource_id)}.", code="not_found", param=param)


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
