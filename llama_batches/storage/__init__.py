"""Storage: typed tables of owned records on SQLite, Postgres or memory."""

from __future__ import annotations

from .backends import StorageBackends, table_name
from .base import (
    Fence,
    Lease,
    LeaseLost,
    Leases,
    Page,
    RequestResult,
    ResultLog,
    ResultTotals,
    Stored,
    Table,
    TableFactory,
)
from .config import (
    BackendType,
    KVStoreReference,
    SqlStoreReference,
    StorageConfig,
    StoreReference,
)
from .memory import MemoryDatabase, MemoryResultLog, MemoryTable
from .sqlite import SqliteDatabase, SqliteResultLog, SqliteTable

__all__ = [
    "BackendType",
    "Fence",
    "KVStoreReference",
    "Lease",
    "LeaseLost",
    "Leases",
    "MemoryDatabase",
    "MemoryResultLog",
    "MemoryTable",
    "Page",
    "RequestResult",
    "ResultLog",
    "ResultTotals",
    "SqlStoreReference",
    "SqliteDatabase",
    "SqliteResultLog",
    "SqliteTable",
    "StorageBackends",
    "StorageConfig",
    "StoreReference",
    "Stored",
    "Table",
    "TableFactory",
    "table_name",
]
