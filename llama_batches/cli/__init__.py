"""The ``llama-batches`` command: one module per group of commands (``main`` builds the app from them)."""

from __future__ import annotations

from .main import app, main

__all__ = ["app", "main"]
