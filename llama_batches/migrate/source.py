"""Where a llama-stack 0.7.3 deployment keeps its batches and files, read from its run config.

llama-stack's ``inline::reference`` batches keep each batch as JSON under the key ``batch:<id>`` of the KV backend
its ``kvstore`` names. On ``kv_sqlite`` the keys are not namespaced (the table is ``kvstore``); on ``kv_postgres`` they
are prefixed with the reference's namespace (``batches:batch:<id>``) in the backend's ``table_name`` (default
``llamastack_kvstore``). Its ``inline::localfs`` files keep their metadata in the table ``openai_files`` of the SQL
backend its ``metadata_store`` names (whatever ``table_name`` says), with the owner in ``owner_principal`` and
``access_attributes``, and their content in ``storage_dir/<id>`` (the row's ``file_path``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import substitute_env
from ..errors import ConfigError

__all__ = [
    "FILES_TABLE",
    "BatchesSource",
    "Database",
    "FilesSource",
    "LlamaStackSource",
    "PostgresDatabase",
    "SqliteDatabase",
    "read_source",
]

FILES_TABLE = "openai_files"
"""The table of llama-stack's ``inline::localfs`` (its ``metadata_store.table_name`` is not used)."""
SQLITE_KV_TABLE = "kvstore"
POSTGRES_KV_TABLE = "llamastack_kvstore"
BATCH_KEY = "batch:"


@dataclass(frozen=True)
class SqliteDatabase:
    """A SQLite database file."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class PostgresDatabase:
    """A PostgreSQL database."""

    host: str
    port: int
    db: str
    user: str
    password: str | None = None
    ssl_mode: str | None = None

    def __str__(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.db}"


Database = SqliteDatabase | PostgresDatabase


@dataclass(frozen=True)
class BatchesSource:
    """The KV table holding llama-stack's batches and the prefix of their keys."""

    path: str
    """Where the batches provider is in the run config."""
    backend: str
    database: Database
    table: str
    prefix: str


@dataclass(frozen=True)
class FilesSource:
    """The table holding llama-stack's files metadata and the directory holding their content."""

    path: str
    backend: str
    database: Database
    storage_dir: Path
    table: str = FILES_TABLE


@dataclass(frozen=True)
class LlamaStackSource:
    """What ``import-llama-stack`` reads, and the llama-stack tables of the deployment (per backend name)."""

    batches: BatchesSource
    files: FilesSource
    backends: Mapping[str, Database]
    tables: Mapping[str, frozenset[str]]
    """Table names llama-stack uses, by backend name: those read here and the ``storage.stores`` tables."""


def _read_raw(config: Path) -> Mapping[str, Any]:
    try:
        raw = yaml.safe_load(config.expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(config), f"cannot read the config file: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(str(config), f"not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise ConfigError(str(config), "a llama-stack run config must be a mapping")
    substituted = substitute_env(dict(raw))
    assert isinstance(substituted, dict)
    return substituted


def _entry(raw: Mapping[str, Any], api: str, provider_type: str, fields: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The config of the enabled ``provider_type`` provider of ``api``, with ``fields`` present, and its path."""
    entries = (raw.get("providers") or {}).get(api) or []
    found = [(i, e) for i, e in enumerate(entries) if isinstance(e, Mapping) and e.get("provider_id")]
    matching = [(i, e) for i, e in found if e.get("provider_type") == provider_type]
    if not matching:
        types = ", ".join(str(e.get("provider_type")) for _, e in found) or "none"
        raise ConfigError(
            f"providers.{api}",
            f"no {provider_type} provider (found: {types}): import-llama-stack reads llama-stack's {provider_type} "
            f"{api}",
        )
    index, entry = matching[0]
    config = entry.get("config") or {}
    path = f"providers.{api}[{index}].config"
    for field in fields:
        if not config.get(field):
            raise ConfigError(f"{path}.{field}", f"missing: llama-stack's {provider_type} keeps its {api} there")
    return path, dict(config)


def _database(raw: Mapping[str, Any], name: str, path: str, kinds: tuple[str, str]) -> tuple[Database, dict[str, Any]]:
    backends = ((raw.get("storage") or {}).get("backends")) or {}
    backend = backends.get(name)
    if not isinstance(backend, Mapping):
        known = ", ".join(sorted(backends)) or "(none)"
        raise ConfigError(path, f"unknown storage backend '{name}'; storage.backends has: {known}")
    kind, where = backend.get("type"), f"storage.backends.{name}"
    if kind == kinds[0]:
        if not backend.get("db_path"):
            raise ConfigError(f"{where}.db_path", "missing")
        return SqliteDatabase(Path(str(backend["db_path"])).expanduser()), dict(backend)
    if kind == kinds[1]:
        if not backend.get("user"):
            raise ConfigError(f"{where}.user", "missing")
        database = PostgresDatabase(
            host=str(backend.get("host") or "localhost"),
            port=int(backend.get("port") or 5432),
            db=str(backend.get("db") or "llamastack"),
            user=str(backend["user"]),
            password=None if backend.get("password") is None else str(backend["password"]),
            ssl_mode=None if backend.get("ssl_mode") is None else str(backend["ssl_mode"]),
        )
        return database, dict(backend)
    raise ConfigError(f"{where}.type", f"'{kind}' is not supported here (supported: {', '.join(kinds)})")


def _batches(raw: Mapping[str, Any]) -> BatchesSource:
    path, config = _entry(raw, "batches", "inline::reference", ("kvstore",))
    ref = config["kvstore"]
    if not isinstance(ref, Mapping) or not ref.get("backend"):
        raise ConfigError(f"{path}.kvstore.backend", "missing: the kvstore must name a backend of storage.backends")
    database, backend = _database(raw, str(ref["backend"]), f"{path}.kvstore.backend", ("kv_sqlite", "kv_postgres"))
    if isinstance(database, SqliteDatabase):  # llama-stack's SQLite KV store ignores the namespace
        return BatchesSource(path, str(ref["backend"]), database, SQLITE_KV_TABLE, BATCH_KEY)
    namespace = ref.get("namespace")
    prefix = f"{namespace}:{BATCH_KEY}" if namespace else BATCH_KEY
    table = str(backend.get("table_name") or POSTGRES_KV_TABLE)
    return BatchesSource(path, str(ref["backend"]), database, table, prefix)


def _files(raw: Mapping[str, Any]) -> FilesSource:
    path, config = _entry(raw, "files", "inline::localfs", ("storage_dir", "metadata_store"))
    ref = config["metadata_store"]
    if not isinstance(ref, Mapping) or not ref.get("backend"):
        raise ConfigError(f"{path}.metadata_store.backend", "missing: it must name a backend of storage.backends")
    where = f"{path}.metadata_store.backend"
    database, _ = _database(raw, str(ref["backend"]), where, ("sql_sqlite", "sql_postgres"))
    return FilesSource(path, str(ref["backend"]), database, Path(str(config["storage_dir"])).expanduser())


def _store_tables(raw: Mapping[str, Any]) -> dict[str, set[str]]:
    """The ``storage.stores`` tables (inference_store, openai_conversations, ...) by backend name."""
    tables: dict[str, set[str]] = {}
    for store in ((raw.get("storage") or {}).get("stores") or {}).values():
        if isinstance(store, Mapping) and store.get("backend") and store.get("table_name"):
            tables.setdefault(str(store["backend"]), set()).add(str(store["table_name"]))
    return tables


def _other_databases(raw: Mapping[str, Any], names: set[str]) -> dict[str, Database]:
    """The databases of the backends ``names`` that this module can open (the others cannot collide with ours)."""
    found: dict[str, Database] = {}
    for name in sorted(names):
        for kinds in (("kv_sqlite", "kv_postgres"), ("sql_sqlite", "sql_postgres")):
            try:
                found[name] = _database(raw, name, f"storage.backends.{name}", kinds)[0]
                break
            except ConfigError:
                continue
    return found


def read_source(config: Path) -> LlamaStackSource:
    """Where the llama-stack deployment of ``config`` (a llama-stack 0.7.3 run config) keeps batches and files.
    Raises ConfigError naming the path of what is missing or unsupported."""
    raw = _read_raw(config)
    batches, files = _batches(raw), _files(raw)
    tables = _store_tables(raw)
    tables.setdefault(batches.backend, set()).add(batches.table)
    tables.setdefault(files.backend, set()).add(files.table)
    backends = _other_databases(raw, set(tables))
    backends.update({batches.backend: batches.database, files.backend: files.database})
    return LlamaStackSource(batches, files, backends, {name: frozenset(t) for name, t in tables.items()})
