"""The HTTP app: OpenAI's routes for the stack's APIs (batches, files, models, and inference on the raw path),
llama-stack's own routes (version, providers, inspect), OpenAI-shaped errors, the stack's life tied to the app's, and
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
from .routes_files import files_router
from .routes_inference import router as inference_router
from .routes_llama_stack import router as llama_stack_router
from .routes_models import router as models_router

__all__ = ["LOCAL_PATHS", "PUBLIC_PATHS", "create_app"]

logger = logging.getLogger(__name__)

PUBLIC_PATHS = ("/v1/health",)
"""Paths served without authentication (besides the OpenAPI schema and the docs pages)."""
LOCAL_PATHS = ("/v1/version", "/v1/providers", "/v1/providers/{provider_id}", "/v1/inspect/routes")
"""Paths the server answers from the stack's config and its own routes, never from an upstream or a store."""


def _public_paths(app: FastAPI) -> list[str]:
    paths = [*PUBLIC_PATHS, app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url]
    return [path for path in paths if path]


def create_app(stack: Stack) -> FastAPI:
    """An app serving ``stack`` (started when the app starts, shut down when it stops, so batches resume next
    time). Routes exist for the APIs the stack has, besides llama-stack's version, providers and inspect routes.
    With ``server.auth`` in the stack's config, every request but ``/v1/health`` and the docs must authenticate and
    is served as its principal; without it, everyone is ``anonymous``."""
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
    install_openapi(app, public_paths=PUBLIC_PATHS, local_paths=LOCAL_PATHS, authenticated=authenticator is not None)
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
        app.include_router(inference_router)
    app.include_router(llama_stack_router)

    @app.get("/v1/health", tags=["Health"], summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "OK"}

    return app
