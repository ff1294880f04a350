"""Refuse an import whose llama-batches tables would land on llama-stack's own tables.

llama-batches names a provider's tables after its store reference (``table_name``, else ``namespace``, see
:func:`llama_batches.storage.backends.table_name`): ``files_metadata`` for the files of a llama-stack config,
``batches_batches``, ``batches_requests`` and ``batches_leases`` for its batches. llama-stack's tables are
``kvstore`` (SQLite KV), ``llamastack_kvstore`` (PostgreSQL KV), ``openai_files`` (files) and those of
``storage.stores``. A reference named like one of these on the same database is refused before anything is opened.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel

from ..errors import ConfigError
from ..stack import Stack
from ..storage import StoreReference
from ..storage.backends import table_name
from ..storage.config import BackendConfig, PostgresBackendConfig, SqliteBackendConfig
from .source import Database, LlamaStackSource, PostgresDatabase, SqliteDatabase

__all__ = ["check_collisions", "same_database"]


def same_database(a: Database | None, b: Database | None) -> bool:
    """Whether ``a`` and ``b`` are one database (the same SQLite file; the same PostgreSQL host, port and db)."""
    if isinstance(a, SqliteDatabase) and isinstance(b, SqliteDatabase):
        return a.path.expanduser().resolve() == b.path.expanduser().resolve()
    if isinstance(a, PostgresDatabase) and isinstance(b, PostgresDatabase):
        return (a.host, a.port, a.db) == (b.host, b.port, b.db)
    return False


def _ours(backends: Mapping[str, BackendConfig]) -> dict[str, Database]:
    found: dict[str, Database] = {}
    for name, config in backends.items():
        if isinstance(config, SqliteBackendConfig):
            found[name] = SqliteDatabase(Path(config.db_path).expanduser())
        elif isinstance(config, PostgresBackendConfig):
            found[name] = PostgresDatabase(config.host, config.port, config.db, config.user, config.password)
    return found


def _references(config: BaseModel) -> Iterator[tuple[str, StoreReference]]:
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, StoreReference):
            yield name, value


def check_collisions(source: LlamaStackSource, stack: Stack) -> None:
    """ConfigError naming the reference of ``stack`` (not started yet) whose tables are llama-stack's."""
    ours = _ours(stack.config.storage.backends)
    for planned in stack.plan:
        for field, ref in _references(planned.config):
            database = ours.get(ref.backend)
            name = table_name(ref)
            for backend, tables in source.tables.items():
                if name in tables and same_database(source.backends.get(backend), database):
                    key = "table_name" if ref.table_name else "namespace"
                    raise ConfigError(
                        f"{planned.path}.config.{field}.{key}",
                        f"llama-batches would keep this provider's rows in the table '{name}' of {database}, which is "
                        f"llama-stack's own table '{name}': give {key} another value (e.g. files_metadata, batches)",
                    )
