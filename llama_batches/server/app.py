"""The HTTP app: OpenAI's routes for the stack's APIs, OpenAI-shaped errors, the stack's life tied to the app's, and
(with ``server.auth``) authentication: each request is served as its principal."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..api import Api
from ..stack import Stack
from .auth import Authenticator, AuthMiddleware
from .errors import install_error_handlers
from .limits import BodyLimit
from .openapi import install_openapi
from .routes_batches import router as batches_router
from .routes_files import files_router, models_router

__all__ = ["PUBLIC_PATHS", "create_app"]

logger = logging.getLogger(__name__)

PUBLIC_PATHS = ("/v1/health",)
"""Paths served without authentication (besides the OpenAPI schema and the docs pages)."""


def _public_paths(app: FastAPI) -> list[str]:
    paths = [*PUBLIC_PATHS, app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url]
    return [path for path in paths if path]


def create_app(stack: Stack) -> FastAPI:
    """An app serving ``stack`` (started when the app starts, shut down when it stops, so batches resume next
    time). Routes exist for the APIs the stack has. With ``server.auth`` in the stack's config, every request but
    ``/v1/health`` and the docs must authenticate and is served as its principal; without it, everyone is
    ``anonymous``."""
    auth = stack.config.server.auth
    authenticator = Authenticator(auth) if auth is not None and auth.enabled else None
    if auth is not None and authenticator is None:
        logger.warning("server.auth names no provider_config and no api_keys: requests are not authenticated")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with stack:
                yield
        finally:
            if authenticator is not None:
                await authenticator.close()

    app = FastAPI(
        title="llama-batches",
        version=__version__,
        description="OpenAI-compatible Batches and Files API with idempotent batch creation.",
        lifespan=lifespan,
    )
    app.state.stack = stack
    install_error_handlers(app)
    install_openapi(app, public_paths=PUBLIC_PATHS, authenticated=authenticator is not None)
    if authenticator is not None:
        app.add_middleware(AuthMiddleware, authenticator=authenticator, public_paths=_public_paths(app))
    app.add_middleware(BodyLimit)  # added last, so outermost: a 401 is capped and drained like any answer
    planned = {p.api for p in stack.plan}
    if Api.batches in planned:
        app.include_router(batches_router)
    if Api.files in planned:
        app.include_router(files_router)
    if Api.inference in planned:
        app.include_router(models_router)

    @app.get("/v1/health", tags=["Health"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "OK"}

    return app
