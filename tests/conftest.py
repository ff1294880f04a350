"""Shared fixtures and run-config helpers.

Fixtures: ``fake_backend`` (a running FakeBackend with defaults) and ``fake_run_config`` (a run config on
``tmp_path`` whose inference is ``remote::openai`` on that backend).

Helpers (plain functions, importable as ``from tests.conftest import run_config, openai_provider``):
``run_config`` builds a llama-stack style config dict with ``inline::localfs`` files and SQLite storage in a
directory; ``openai_provider`` and ``llama_cpp_provider`` build its inference entries.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from .fake_backend import FakeBackend

__all__ = ["llama_cpp_provider", "openai_provider", "postgres_backend", "run_config"]


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


def postgres_backend(postgres: dict[str, Any]) -> dict[str, Any]:
    """HELPER: a ``sql_postgres`` backend entry for the ``postgres`` fixture's database."""
    return {"type": "sql_postgres", **postgres}


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


# PostgreSQL -----------------------------------------------------------------------------------------------------

POSTGRES_ENV = "LLAMA_BATCHES_TEST_POSTGRES_URL"
_postgres_status: dict[str, str] = {}


def _postgres_base() -> dict[str, Any]:
    """Where the test server is: $LLAMA_BATCHES_TEST_POSTGRES_URL, else 127.0.0.1:5432 (trust auth, user root)."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        parsed = urlparse(url)
        return {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 5432,
            "user": parsed.username or getpass.getuser(),
            "password": parsed.password,
            "db": (parsed.path or "/test").lstrip("/") or "test",
        }
    return {"host": "127.0.0.1", "port": 5432, "user": getpass.getuser(), "password": None, "db": "test"}


async def _connect(base: dict[str, Any], db: str) -> Any:
    import asyncpg

    return await asyncpg.connect(
        host=base["host"], port=base["port"], user=base["user"], password=base["password"], database=db, timeout=3
    )


def _start_local_postgres() -> None:
    """Start the machine's PostgreSQL cluster if it is installed but stopped (the test command needs it)."""
    if shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir():
        return
    for version in sorted(p.name for p in Path("/etc/postgresql").iterdir()):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], capture_output=True, check=False
        )


async def _create_database(base: dict[str, Any]) -> str:
    name = f"llama_batches_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = await _connect(base, base["db"])
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_database(base: dict[str, Any], name: str) -> None:
    conn = await _connect(base, base["db"])
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[dict[str, Any]]:
    """A fresh database on the test PostgreSQL server for this session, as a ``sql_postgres`` backend config
    (without ``type``). Tests using it skip, and the summary says so loudly, when no server can be reached."""
    base = _postgres_base()
    try:
        name = asyncio.run(_create_database(base))
    except Exception as first:  # not running? start it once, then try again
        _start_local_postgres()
        try:
            name = asyncio.run(_create_database(base))
        except Exception as exc:
            _postgres_status["missing"] = f"{base['host']}:{base['port']} ({type(exc).__name__}: {exc}; {first})"
            pytest.skip(f"no PostgreSQL server at {base['host']}:{base['port']}: the Postgres tests did not run")
    _postgres_status["used"] = f"{base['host']}:{base['port']}/{name}"
    yield {"host": base["host"], "port": base["port"], "user": base["user"], "password": base["password"], "db": name}
    asyncio.run(_drop_database(base, name))


LLAMA_STACK_TIMEOUT_S = 1500
"""A test using ``llama_stack_bin`` may build the llama-stack venv first (about four minutes on two cores)."""
_llama_stack_status: dict[str, str] = {}


@pytest.fixture(scope="session")
def llama_stack_bin() -> Path:
    """The ``bin`` directory of the Python 3.12 venv with llama-stack 0.7.3 and this checkout (built and cached by
    :mod:`tests.llama_stack_venv`). Tests using it skip, and the summary says so loudly, without a Python 3.12."""
    from .llama_stack_venv import llama_stack_venv

    try:
        return llama_stack_venv()
    except LookupError as exc:
        _llama_stack_status["missing"] = str(exc)
        pytest.skip(f"LLAMA-STACK TESTS NOT RUN: {exc}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the llama-stack venv get the time to build it."""
    for item in items:
        if "llama_stack_bin" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(LLAMA_STACK_TIMEOUT_S))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say loudly whether the Postgres and llama-stack tests ran."""
    if "missing" in _llama_stack_status:
        terminalreporter.section("LLAMA-STACK TESTS DID NOT RUN", sep="!", red=True, bold=True)
        terminalreporter.line(f"{_llama_stack_status['missing']}", red=True, bold=True)
    if "missing" in _postgres_status:
        terminalreporter.section("POSTGRES TESTS DID NOT RUN", sep="!", red=True, bold=True)
        terminalreporter.line(
            f"No PostgreSQL server at {_postgres_status['missing']}. Start one (or set {POSTGRES_ENV}) "
            "to run the Postgres storage, worker and takeover tests.",
            red=True,
            bold=True,
        )
    elif "used" in _postgres_status:
        terminalreporter.line(f"Postgres tests ran against {_postgres_status['used']} (dropped afterwards).")
