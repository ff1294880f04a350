"""Shared fixtures and run-config helpers.

Fixtures: ``fake_backend`` (a running FakeBackend with defaults) and ``fake_run_config`` (a run config on
``tmp_path`` whose inference is ``remote::openai`` on that backend).

Helpers (plain functions, importable as ``from tests.conftest import run_config, openai_provider``):
``run_config`` builds a llama-stack style config dict with ``inline::localfs`` files and SQLite storage in a
directory; ``openai_provider`` and ``llama_cpp_provider`` build its inference entries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .fake_backend import FakeBackend

__all__ = ["llama_cpp_provider", "openai_provider", "run_config"]


# helpers --------------------------------------------------------------------------------------------------------


def openai_provider(base_url: str, *, provider_id: str = "fake", **config: Any) -> dict[str, Any]:
    """HELPER: a ``remote::openai`` inference entry for the server at ``base_url`` (extra config fields allowed)."""
    return {
        "provider_id": provider_id,
        "provider_type": "remote::openai",
        "config": {"base_url": base_url, "api_key": "test", **config},
    }


def llama_cpp_provider(*, provider_id: str = "local", **config: Any) -> dict[str, Any]:
    """HELPER: an ``inline::llama-cpp`` inference entry (the bundled SmolLM2 model unless configured)."""
    return {"provider_id": provider_id, "provider_type": "inline::llama-cpp", "config": dict(config)}


def run_config(
    directory: Path,
    *inference: dict[str, Any],
    extra_providers: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """HELPER: a run config with ``inline::localfs`` files under ``directory``, SQLite storage in
    ``directory/sql.db``, the given inference entries and any ``extra_providers`` (e.g. ``{"batches": [...]}``)."""
    providers: dict[str, list[dict[str, Any]]] = {
        "files": [
            {
                "provider_id": "localfs",
                "provider_type": "inline::localfs",
                "config": {
                    "storage_dir": str(directory / "files"),
                    "metadata_store": {"backend": "sql_default", "table_name": "files_metadata"},
                },
            }
        ],
        "inference": list(inference),
        **(extra_providers or {}),
    }
    return {
        "version": 2,
        "apis": [api for api, entries in providers.items() if entries],
        "providers": providers,
        "storage": {"backends": {"sql_default": {"type": "sql_sqlite", "db_path": str(directory / "sql.db")}}},
        "registered_resources": {"models": []},
    }


# fixtures -------------------------------------------------------------------------------------------------------


@pytest.fixture
async def fake_backend() -> AsyncIterator[FakeBackend]:
    """A fake OpenAI-compatible server on loopback: no latency, no faults, models fake-model and fake-embed."""
    async with FakeBackend() as backend:
        yield backend


@pytest.fixture
def fake_run_config(tmp_path: Path, fake_backend: FakeBackend) -> dict[str, Any]:
    """A run config on ``tmp_path`` whose inference provider ``fake`` is ``remote::openai`` on ``fake_backend``."""
    return run_config(tmp_path, openai_provider(fake_backend.base_url))
