"""Storage backend configs and references, in llama-stack's ``storage`` format.

```yaml
storage:
  backends:
    kv_default: {type: kv_sqlite, db_path: ~/.llama/kvstore.db}
    sql_default: {type: sql_sqlite, db_path: ~/.llama/sql_store.db}
```
Providers refer to a backend by name: ``{backend: kv_default, namespace: batches}`` or
``{backend: sql_default, table_name: files_metadata}``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

__all__ = [
    "BackendConfig",
    "BackendType",
    "KVStoreReference",
    "MemoryBackendConfig",
    "OtherBackendConfig",
    "PostgresBackendConfig",
    "SqlStoreReference",
    "SqliteBackendConfig",
    "StorageConfig",
    "StoreReference",
]


class BackendType(StrEnum):
    """Backend types llama-batches can open (llama-stack's names, plus in-memory ones for tests)."""

    kv_sqlite = "kv_sqlite"
    sql_sqlite = "sql_sqlite"
    kv_postgres = "kv_postgres"
    sql_postgres = "sql_postgres"
    kv_memory = "kv_memory"
    sql_memory = "sql_memory"


class SqliteBackendConfig(BaseModel):
    """A SQLite database file."""

    model_config = ConfigDict(extra="ignore")

    type: Literal[BackendType.kv_sqlite, BackendType.sql_sqlite]
    db_path: str = Field(description="Path of the database file; created with its directory when missing.")
    auto_migrate: bool = Field(
        default=True,
        description="Apply pending schema migrations when a store is opened at start (one process at a time). "
        "With false, a process only creates missing stores and refuses an outdated one: run "
        "'llama-batches db upgrade' first.",
    )


class PostgresBackendConfig(BaseModel):
    """A PostgreSQL database."""

    model_config = ConfigDict(extra="ignore")

    type: Literal[BackendType.kv_postgres, BackendType.sql_postgres]
    host: str = "localhost"
    port: int = 5432
    db: str = "llamastack"
    user: str
    password: str | None = None
    pool_size: int = Field(default=10, ge=1, description="Connections kept open to the database at most.")
    auto_migrate: bool = Field(
        default=True,
        description="Apply pending schema migrations when a store is opened at start (one process at a time). "
        "With false, a process only creates missing stores and refuses an outdated one: run "
        "'llama-batches db upgrade' first.",
    )


class MemoryBackendConfig(BaseModel):
    """Process memory: nothing survives the process (for tests and throwaway runs)."""

    type: Literal[BackendType.kv_memory, BackendType.sql_memory]


class OtherBackendConfig(BaseModel):
    """A backend type llama-batches cannot open (kv_redis, kv_mongodb, ...): accepted, an error only if used."""

    model_config = ConfigDict(extra="allow")

    type: str


def _backend_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in (BackendType.kv_sqlite, BackendType.sql_sqlite):
        return "sqlite"
    if kind in (BackendType.kv_postgres, BackendType.sql_postgres):
        return "postgres"
    if kind in (BackendType.kv_memory, BackendType.sql_memory):
        return "memory"
    return "other"


BackendConfig = Annotated[
    Annotated[SqliteBackendConfig, Tag("sqlite")]
    | Annotated[PostgresBackendConfig, Tag("postgres")]
    | Annotated[MemoryBackendConfig, Tag("memory")]
    | Annotated[OtherBackendConfig, Tag("other")],
    Discriminator(_backend_tag),
]


class StoreReference(BaseModel):
    """Where a provider keeps its rows: a backend name and a namespace (KV) or table name (SQL)."""

    model_config = ConfigDict(extra="ignore")

    backend: str = Field(description="Name of a backend in storage.backends.")
    namespace: str | None = Field(default=None, description="Key prefix (KV backends); names the tables.")
    table_name: str | None = Field(default=None, description="Table name (SQL backends).")

    @property
    def name(self) -> str:
        """The name that prefixes the reference's tables."""
        return self.table_name or self.namespace or "default"


class KVStoreReference(StoreReference):
    """A reference to a KV backend, as llama-stack writes it: ``{backend, namespace}``."""

    namespace: str | None = Field(default=None, description="Key prefix; names the tables.")


class SqlStoreReference(StoreReference):
    """A reference to a SQL backend, as llama-stack writes it: ``{backend, table_name}``."""

    table_name: str | None = Field(default=None, description="Table name.")


class StorageConfig(BaseModel):
    """The ``storage`` block: named backends (``stores`` and other llama-stack keys are accepted and unused)."""

    model_config = ConfigDict(extra="allow")

    backends: dict[str, BackendConfig] = Field(default_factory=dict)
