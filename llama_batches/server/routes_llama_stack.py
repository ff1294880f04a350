"""llama-stack's own routes, in llama-stack 0.7.3's shapes, from what this server really has: ``GET /v1/version``
(llama-batches' version, never a llama-stack version), ``GET /v1/providers`` and ``/v1/providers/{provider_id}`` (the
providers of the run config that the stack serves, their config as written with secrets redacted, and their health
when they implement ``health()``; none of llama-batches' own does, so they say ``Not Implemented``), and
``GET /v1/inspect/routes`` (the operations of this app's OpenAPI document, each with the provider types of the API
that serves it). ``llama-stack-client inspect version``, ``providers list`` and ``client.routes.list()`` read them.
Unlike llama-stack, ``/v1/version`` is not public: with ``server.auth``, only ``/v1/health`` is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from .. import __version__
from ..api import Api
from ..errors import NotFoundError, bounded
from ..stack import PlannedProvider, Stack

__all__ = [
    "HEALTH_TIMEOUT_S",
    "ListProvidersResponse",
    "ListRoutesResponse",
    "ProviderInfo",
    "RouteInfo",
    "VersionInfo",
    "redacted",
    "router",
]

router = APIRouter(prefix="/v1")

HEALTH_TIMEOUT_S = 3.0
"""How long a provider's ``health()`` may take (llama-stack's figure); then it is reported as an error."""
_SENSITIVE = ("api_key", "api_token", "password", "secret", "token", "credential")
_NOT_SENSITIVE = ("chunk_size_tokens", "max_tokens", "default_chunk_overlap_tokens", "max_document_tokens")
_REDACTED = "********"
_SERVED_BY = {"Batches": Api.batches, "Files": Api.files, "Models": Api.inference, "Inference": Api.inference}
"""The API whose providers serve the routes of a tag (models are the inference providers')."""
_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "PATCH"})
_NOT_IMPLEMENTED = {"status": "Not Implemented", "message": "Provider does not implement health check"}


class VersionInfo(BaseModel):
    """llama-stack's version answer."""

    version: str = Field(description="The version of llama-batches serving this API.")


class ProviderInfo(BaseModel):
    """A provider of the run config that the stack serves (llama-stack's shape)."""

    api: str = Field(description="The API it implements.")
    provider_id: str
    provider_type: str = Field(description="As written in the run config.")
    config: dict[str, Any] = Field(description="Its config as written, every secret-looking value redacted.")
    health: dict[str, Any] = Field(description='{"status": "OK" | "Error" | "Not Implemented", "message"?}')


class ListProvidersResponse(BaseModel):
    """Every provider the stack serves."""

    data: list[ProviderInfo]


class RouteInfo(BaseModel):
    """A route of this server (llama-stack's shape)."""

    route: str
    method: str
    provider_types: list[str] = Field(description="The provider types of the API that serves the route.")


class ListRoutesResponse(BaseModel):
    """The routes of this server."""

    data: list[RouteInfo]


def _stack(request: Request) -> Stack:
    stack: Stack = request.app.state.stack
    return stack


def _sensitive(key: str) -> bool:
    lowered = key.lower()
    return not any(safe in lowered for safe in _NOT_SENSITIVE) and any(word in lowered for word in _SENSITIVE)


def _without_password(text: str) -> str:
    """A URL with the password of its user info replaced; any other string as it is."""
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if not password or not parts.netloc:
        return text
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{_REDACTED}@{host}"))


def redacted(value: Any) -> Any:
    """``value`` (a provider's config) with the value of every key that names a secret (as llama-stack redacts:
    ``api_key``, ``token``, ``password``, ``secret``..., plus ``credential``) and the password of every URL replaced
    by ``********``."""
    if isinstance(value, Mapping):
        return {key: _REDACTED if _sensitive(str(key)) else redacted(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redacted(item) for item in value]
    if isinstance(value, str):
        return _without_password(value)
    return value


async def _health(provider: object | None) -> dict[str, Any]:
    check = getattr(provider, "health", None)
    if check is None:
        return dict(_NOT_IMPLEMENTED)
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_S):
            answer = await check()
    except TimeoutError:
        return {"status": "Error", "message": f"Health check timed out after {HEALTH_TIMEOUT_S:g} seconds"}
    except Exception as exc:  # a provider's own check failing is what health reports, not a failure of this route
        return {"status": "Error", "message": f"Health check failed: {bounded(str(exc), 300)}"}
    if not isinstance(answer, Mapping) or "status" not in answer:
        return {"status": "Error", "message": "Health check answered something that is not a health status"}
    return dict(answer)


async def _providers(stack: Stack, plan: list[PlannedProvider]) -> list[ProviderInfo]:
    healths = await asyncio.gather(*(_health(stack.providers.get(p.entry.provider_id)) for p in plan))
    return [
        ProviderInfo(
            api=p.api.value,
            provider_id=p.entry.provider_id,
            provider_type=p.entry.provider_type,
            config=redacted(p.entry.config),
            health=health,
        )
        for p, health in zip(plan, healths, strict=True)
    ]


@router.get("/version", response_model=VersionInfo, tags=["Inspect"], summary="Version")
async def version() -> VersionInfo:
    """The version of llama-batches (this server is llama-batches, not llama-stack)."""
    return VersionInfo(version=__version__)


@router.get("/providers", response_model=ListProvidersResponse, tags=["Providers"], summary="List providers")
async def list_providers(request: Request) -> ListProvidersResponse:
    """The providers of the run config that the stack serves (APIs and provider types llama-batches does not
    implement are skipped at start and not listed)."""
    stack = _stack(request)
    return ListProvidersResponse(data=await _providers(stack, stack.plan))


@router.get("/providers/{provider_id}", response_model=ProviderInfo, tags=["Providers"], summary="Get a provider")
async def inspect_provider(provider_id: str, request: Request) -> ProviderInfo:
    stack = _stack(request)
    found = [p for p in stack.plan if p.entry.provider_id == provider_id][:1]
    if not found:
        raise NotFoundError.for_resource("provider", provider_id, param="provider_id")
    return (await _providers(stack, found))[0]


def _included(path: str, operation: Mapping[str, Any], api_filter: str | None) -> bool:
    deprecated = bool(operation.get("deprecated"))
    if api_filter == "deprecated":
        return deprecated
    return not deprecated and (api_filter is None or path.split("/")[1] == api_filter)


@router.get("/inspect/routes", response_model=ListRoutesResponse, tags=["Inspect"], summary="List routes")
async def list_routes(
    request: Request,
    api_filter: Annotated[
        Literal["v1", "v1alpha", "v1beta", "deprecated"] | None,
        Query(description="Only the routes of this API level, or only the deprecated ones (there are none)."),
    ] = None,
) -> ListRoutesResponse:
    """Every operation of this server's OpenAPI document (the app's routes, one entry per method), in order."""
    types: dict[Api, list[str]] = {}
    for planned in _stack(request).plan:
        types.setdefault(planned.api, []).append(planned.entry.provider_type)
    document: dict[str, Any] = request.app.openapi()
    data = []
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method.upper() not in _METHODS or not _included(path, operation, api_filter):
                continue
            apis = {_SERVED_BY[tag] for tag in operation.get("tags", []) if tag in _SERVED_BY}
            provider_types = [kind for api in sorted(apis) for kind in types.get(api, [])]
            data.append(RouteInfo(route=path, method=method.upper(), provider_types=provider_types))
    return ListRoutesResponse(data=data)
