"""The OpenAI-compatible HTTP server (FastAPI + uvicorn).

``create_app`` is imported on first use, so that ``llama_batches.config`` can import the ``server.auth`` models
(:mod:`.auth_config`) without importing the app, which imports the stack, which imports the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
