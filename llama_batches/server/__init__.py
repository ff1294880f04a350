"""The OpenAI-compatible HTTP server (FastAPI + uvicorn): :func:`create_app` serves a built stack."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
