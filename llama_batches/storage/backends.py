"""Open the databases named in ``storage.backends`` and hand providers tables on them.

Each backend is opened once, on first use, and shared by every provider that refers to it; the stack closes
them all at shutdown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel

from ..errors import ConfigError
from .base import Leases, ResultLog, Table, TableFactory
from .config import (
    BackendConfig,
    MemoryBackendConfig,
    PostgresBackendConfig,
    SqliteBackendConfig,
    StoreReference,
)
from .memory import MemoryDatabase
from .sqlite import SqliteDatabase

__all__ = ["StorageBackends", "table_name"]

R = TypeVar("R", bound=BaseModel)


def table_name(ref: StoreReference, suffix: str = "") -> str:
    """A SQL-safe table name for ``ref`` (``vector_io::faiss`` becomes ``vector_io__faiss``)."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", ref.name)
    if not base or base[0].isdigit():
        base = f"t_{base}"
    return f"{base}_{suffix}" if suffix else base


class StorageBackends:
    """The stack's storage: backend configs by name, opened lazily."""

    def __init__(self, backends: Mapping[str, BackendConfig]) -> None:
        self._configs = dict(backends)
        self._open: dict[str, TableFactory] = {}

    def _open_backend(self, name: str, path: str) -> TableFactory:
        config = self._configs.get(name)
        if config is None:
            known = ", ".join(sorted(self._configs)) or "(none)"
            raise ConfigError(path, f"unknown storage backend '{name}'; storage.backends has: {known}")
        if isinstance(config, SqliteBackendConfig):
            return SqliteDatabase(config.db_path, auto_migrate=config.auto_migrate)
        if isinstance(config, MemoryBackendConfig):
            return MemoryDatabase()
        if isinstance(config, PostgresBackendConfig):
            from .postgres import PostgresDatabase  # asyncpg is an extra: imported only when configured

            return PostgresDatabase(config)
        supported = "kv_sqlite, sql_sqlite, kv_postgres, sql_postgres, kv_memory, sql_memory"
        raise ConfigError(
            f"storage.backends.{name}.type",
            f"backend type '{config.type}' is not supported by this release (supported: {supported})",
        )

    def backend(self, name: str, *, path: str = "") -> TableFactory:
        """The opened backend ``name``; ``path`` names the config entry for errors."""
        if name not in self._open:
            self._open[name] = self._open_backend(name, path)
        return self._open[name]

    async def table(self, ref: StoreReference, suffix: str, model: type[R], *, path: str = "") -> Table[R]:
        """The table for ``ref`` (plus ``suffix``) holding ``model`` records."""
        return await self.backend(ref.backend, path=path).table(table_name(ref, suffix), model)

    async def result_log(self, ref: StoreReference, suffix: str, *, path: str = "") -> ResultLog:
        """The result log for ``ref`` (plus ``suffix``)."""
        return await self.backend(ref.backend, path=path).result_log(table_name(ref, suffix))

    async def leases(self, ref: StoreReference, suffix: str, *, path: str = "") -> Leases:
        """The lease table for ``ref`` (plus ``suffix``)."""
        return await self.backend(ref.backend, path=path).leases(table_name(ref, suffix))

    async def close(self) -> None:
        """Close every opened backend."""
        for factory in self._open.values():
            await factory.close()
        self._open.clear()
