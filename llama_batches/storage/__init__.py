"""Storage: typed tables of owned records on SQLite, Postgres or memory."""

from __future__ import annotations

from .backends import StorageBackends, table_name
from .base import Page, Stored, Table, TableFactory
from .config import (
    BackendType,
    KVStoreReference,
    SqlStoreReference,
    StorageConfig,
    StoreReference,
)
from .memory import MemoryDatabase, MemoryTable
from .sqlite import SqliteDatabase, SqliteTable

__all__ = [
    "BackendType",
    "KVStoreReference",
    "MemoryDatabase",
    "MemoryTable",
    "Page",
    "SqlStoreReference",
    "SqliteDatabase",
    "SqliteTable",
    "StorageBackends",
    "StorageConfig",
    "StoreReference",
    "Stored",
    "Table",
    "TableFactory",
    "table_name",
]
