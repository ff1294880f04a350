"""The HTTP app: OpenAI's routes for the stack's APIs, OpenAI-shaped errors, the stack's life tied to the app's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..api import Api
from ..stack import Stack
from .errors import install_error_handlers
from .routes_batches import router as batches_router
from .routes_files import files_router, models_router

__all__ = ["create_app"]


def create_app(stack: Stack) -> FastAPI:
    """An app serving ``stack`` (started when the app starts, shut down when it stops, so batches resume next
    time). Routes exist for the APIs the stack has."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with stack:
            yield

    app = FastAPI(
        title="llama-batches",
        version=__version__,
        description="OpenAI-compatible Batches and Files API with idempotent batch creation.",
        lifespan=lifespan,
    )
    app.state.stack = stack
    install_error_handlers(app)
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
