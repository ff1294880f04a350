"""An OpenAPI document that tells the truth: every operation declares the error answers it can give, in OpenAI's
error schema, and none that it cannot (FastAPI's default 422: request validation errors are 400s here).

Routes may declare their own error answers with :func:`error_responses`; :func:`install_openapi` then completes every
operation of the app, whoever wrote its route, by one rule:

- every operation: 400 (a query, header or body the server refuses), 408 and 413 (any request may carry a body,
  which the server caps and times, :mod:`.limits`) and 500;
- an operation with path parameters: 404 (no such resource, or not the caller's);
- an operation served by a provider (all but the public and the local ones): 429, 502, 503 and 504 (the engine's
  in-flight limit, the server's concurrent uploads, or an upstream (inference server, remote API) that refused, failed,
  cannot be reached or timed out); the local ones (version, providers, routes) are answered from the stack's config
  and the app's routes;
- with ``server.auth``, every operation but the public ones: 401 and 503 (authentication service down), and the
  bearer security scheme.

Query parameters that a provider bounds but whose route does not declare the bounds get them from
:data:`QUERY_BOUNDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

__all__ = ["IDEMPOTENCY_KEY_DOC", "ErrorObject", "ErrorResponse", "error_responses", "install_openapi", "truthful"]

IDEMPOTENCY_KEY_DOC = (
    'An RFC 8941 string ("key", with \\" and \\\\ escapes; parameters after it are ignored) or a bare key as '
    "Stripe-style clients send it; printable ASCII only (a key with other characters goes in the body's "
    "idempotency_key). 1 to 255 characters. Same key and parameters: the same batch, with Idempotent-Replayed: true; "
    "other parameters: 409. Sent both as a header and in the body, the two must be the same string."
)

DESCRIPTIONS = {
    400: "The request is invalid; `param` names the parameter.",
    401: "No bearer token, or one that does not verify.",
    404: "No such resource (another principal's is absent too).",
    408: "The request body sent nothing for `server.uploads.idle_timeout_s`; the connection is closed.",
    409: "The request conflicts with the resource's state or with an earlier use of the idempotency key.",
    413: "The request body is larger than its cap (every route has one); the route did nothing.",
    429: (
        "Too many batches in flight, too many uploads at once, or an upstream's rate limit; retry after Retry-After "
        "seconds when given."
    ),
    500: "An unexpected error of the server.",
    502: "An upstream (inference server, remote API) refused or failed the request.",
    503: "An upstream or the authentication service cannot be reached.",
    504: "An upstream did not answer in time.",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "The bearer challenge.", "schema": {"type": "string"}}},
    409: {"x-should-retry": {"description": "The conflict is final.", "schema": {"type": "string", "enum": ["false"]}}},
    429: {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}},
}
_REF = "#/components/schemas/ErrorResponse"
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
QUERY_BOUNDS: dict[tuple[str, str, str], tuple[int, int]] = {("/v1/files", "get", "limit"): (1, 10_000)}
"""Bounds of query parameters whose route does not declare them (the files providers refuse other limits)."""


class ErrorObject(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str = Field(description="invalid_request_error, authentication_error, server_error, ...")
    param: str | None = Field(description="The parameter at fault, when one is.")
    code: str | None = Field(description="A machine-readable code, when there is one.")


class ErrorResponse(BaseModel):
    """Every error answer's body: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorObject


def _response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": _REF}}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def error_responses(*statuses: int, replayed: bool = False) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer ``statuses`` (besides those :func:`install_openapi` adds); with
    ``replayed``, its 200 may carry ``Idempotent-Replayed: true``."""
    responses: dict[int | str, dict[str, Any]] = {status: _response(status) for status in statuses}
    if replayed:
        header = {"description": "The answer of an earlier create with this key.", "schema": {"enum": ["true"]}}
        responses[200] = {"headers": {"Idempotent-Replayed": header}}
    return responses


def _statuses(operation: dict[str, Any], *, public: bool, local: bool, authenticated: bool) -> list[int]:
    statuses = {400, 408, 413, 500}
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        statuses.add(404)
    if not public and not local:
        statuses |= {429, 502, 503, 504}
    if authenticated and not public:
        statuses |= {401, 503}
    return sorted(statuses)


def _declare_bounds(path: str, method: str, operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        bounds = QUERY_BOUNDS.get((path, method, parameter.get("name")))
        if bounds is not None and parameter.get("in") == "query":
            parameter.setdefault("schema", {}).setdefault("minimum", bounds[0])
            parameter["schema"].setdefault("maximum", bounds[1])


def truthful(
    schema: dict[str, Any], *, public_paths: Iterable[str], authenticated: bool, local_paths: Iterable[str] = ()
) -> dict[str, Any]:
    """``schema`` (FastAPI's document) completed in place by the rule above; applying it twice changes nothing."""
    public, local = set(public_paths), set(local_paths)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            kind = {"public": path in public, "local": path in local}
            for status in _statuses(operation, **kind, authenticated=authenticated):
                responses.setdefault(str(status), _response(status))
            _declare_bounds(path, method, operation)
            if authenticated and path not in public:
                operation["security"] = [{"bearer": []}]
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    generated = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(generated.pop("$defs", {}))
    schemas["ErrorResponse"] = generated
    if authenticated:
        components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    return schema


def install_openapi(
    app: FastAPI, *, public_paths: Iterable[str], authenticated: bool, local_paths: Iterable[str] = ()
) -> None:
    """Serve :func:`truthful`'s version of ``app``'s document at ``/openapi.json`` (``local_paths``: the operations
    answered without a provider, see the module docstring)."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    public, local = tuple(public_paths), tuple(local_paths)

    def openapi() -> dict[str, Any]:
        return truthful(generate(), public_paths=public, local_paths=local, authenticated=authenticated)

    setattr(app, "openapi", openapi)  # noqa: B010 (FastAPI's documented way to customise the document)
