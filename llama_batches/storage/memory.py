"""In-memory backend: the same :class:`~llama_batches.storage.base.Table` contract in process memory.

It mirrors the SQLite backend's ordering (``created_at`` then insertion order), atomicity and versioning, and
passes the same conformance tests, so tests and throwaway stacks can use it in place of a database.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel

from ..api.common import Order
from .base import (
    Fence,
    Lease,
    LeaseLost,
    Leases,
    Page,
    Record,
    RequestResult,
    ResultLog,
    ResultTotals,
    Stored,
    Table,
    change_paths,
    check_identifier,
    storable,
)

__all__ = ["MemoryDatabase", "MemoryLeases", "MemoryResultLog", "MemoryTable"]

R = TypeVar("R", bound=BaseModel)


@dataclass(slots=True)
class _Row:
    seq: int
    created_at: int
    tag: str | None
    version: int
    data: str


class MemoryDatabase:
    """Tables kept in memory for the life of this object."""

    def __init__(self) -> None:
        self._tables: dict[str, MemoryTable[BaseModel]] = {}
        self._logs: dict[str, MemoryResultLog] = {}
        self._leases: dict[str, MemoryLeases] = {}

    async def table(self, name: str, model: type[R]) -> Table[R]:
        """The table ``name`` of ``model`` records (the same object on every call)."""
        check_identifier(name)
        if name not in self._tables:
            self._tables[name] = cast("MemoryTable[BaseModel]", MemoryTable(model, self))
        return cast("Table[R]", self._tables[name])

    async def result_log(self, name: str) -> ResultLog:
        """The result log ``name`` (the same object on every call)."""
        check_identifier(name)
        return self._logs.setdefault(name, MemoryResultLog(self))

    async def leases(self, name: str) -> Leases:
        """The lease table ``name`` (the same object on every call)."""
        return self._lease_table(name)

    def _lease_table(self, name: str) -> MemoryLeases:
        check_identifier(name)
        return self._leases.setdefault(name, MemoryLeases(name))

    def check_fence(self, fence: Fence | None) -> None:
        """Raise LeaseLost unless ``fence``'s lease is still at its epoch (nothing to check without a fence)."""
        if fence is not None and self._lease_table(fence.table).epoch(fence.key) != fence.epoch:
            raise LeaseLost(fence.key, fence.epoch)

    async def close(self) -> None:
        """Nothing to release."""


class MemoryTable(Generic[R]):
    """A :class:`~llama_batches.storage.base.Table` in a dict, guarded by one lock."""

    def __init__(self, model: type[R], db: MemoryDatabase | None = None) -> None:
        self._model = model
        self._db = db or MemoryDatabase()
        self._rows: dict[tuple[str, str], _Row] = {}
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()

    async def insert(self, owner: str, record: R, *, tag: str | None = None) -> bool:
        rec = cast(Record, record)
        async with self._lock:
            if (owner, rec.id) in self._rows:
                return False
            self._rows[owner, rec.id] = _Row(next(self._seq), rec.created_at, tag, 1, record.model_dump_json())
            return True

    async def get(self, owner: str, record_id: str) -> Stored[R] | None:
        if not storable(owner, record_id):
            return None
        row = self._rows.get((owner, record_id))
        if row is None:
            return None
        return Stored(self._model.model_validate_json(row.data), row.version)

    async def replace(self, owner: str, record: R, *, expected_version: int, tag: str | None = None) -> bool:
        key = (owner, cast(Record, record).id)
        if not storable(*key):
            return False
        async with self._lock:
            row = self._rows.get(key)
            if row is None or row.version != expected_version:
                return False
            row.data, row.tag, row.version = record.model_dump_json(), tag, row.version + 1
            return True

    async def update(
        self,
        owner: str,
        record_id: str,
        changes: Mapping[str, Any],
        *,
        when_tags: Collection[str] | None = None,
        tag: str | None = None,
        fence: Fence | None = None,
    ) -> Stored[R] | None:
        paths = change_paths(changes)
        if not storable(owner, record_id):
            return None
        async with self._lock:
            self._db.check_fence(fence)
            row = self._rows.get((owner, record_id))
            if row is None or (when_tags is not None and row.tag not in when_tags):
                return None
            data = json.loads(row.data)
            for path, value in paths:
                target = data
                for key in path[:-1]:
                    if not isinstance(target.get(key), dict):
                        target[key] = {}
                    target = target[key]
                target[path[-1]] = json.loads(json.dumps(value))
            record = self._model.model_validate(data)
            row.data, row.version = record.model_dump_json(), row.version + 1
            row.tag = tag if tag is not None else row.tag
            return Stored(record, row.version)

    async def delete(self, owner: str, record_id: str) -> bool:
        if not storable(owner, record_id):
            return False
        async with self._lock:
            return self._rows.pop((owner, record_id), None) is not None

    def tagged(self, tags: Collection[str]) -> builtins.list[tuple[str, str]]:
        """(owner, id) of the rows whose tag is one of ``tags``, oldest first."""
        rows = sorted((r.created_at, r.seq, o, i) for (o, i), r in self._rows.items() if r.tag in tags)
        return [(o, i) for _, _, o, i in rows]

    async def list(
        self,
        owner: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = Order.desc,
        tag: str | None = None,
    ) -> Page[R]:
        if not storable(owner, after):
            return Page([], has_more=False)
        rows = [
            row for (row_owner, _), row in self._rows.items() if row_owner == owner and (tag is None or row.tag == tag)
        ]
        rows.sort(key=lambda r: (r.created_at, r.seq), reverse=order is Order.desc)
        if after is not None:
            anchor = self._rows.get((owner, after))
            if anchor is None:
                return Page([], has_more=False)
            key = (anchor.created_at, anchor.seq)
            if order is Order.desc:
                rows = [r for r in rows if (r.created_at, r.seq) < key]
            else:
                rows = [r for r in rows if (r.created_at, r.seq) > key]
        items = [self._model.model_validate_json(r.data) for r in rows[:limit]]
        return Page(items, has_more=len(rows) > limit)

    async def list_tagged(self, tags: Sequence[str], *, limit: int = 1000) -> builtins.list[tuple[str, Stored[R]]]:
        wanted = set(tags)
        rows = sorted(
            ((owner, row) for (owner, _), row in self._rows.items() if row.tag in wanted),
            key=lambda item: (item[1].created_at, item[1].seq),
        )
        return [(owner, Stored(self._model.model_validate_json(row.data), row.version)) for owner, row in rows[:limit]]


class MemoryResultLog:
    """A :class:`~llama_batches.storage.base.ResultLog` in a dict keyed by (batch, line)."""

    def __init__(self, db: MemoryDatabase | None = None) -> None:
        self._db = db or MemoryDatabase()
        self._results: dict[str, dict[int, RequestResult]] = {}

    async def record(self, owner: str, results: Sequence[RequestResult], *, fence: Fence | None = None) -> None:
        self._db.check_fence(fence)
        for result in results:
            self._results.setdefault(result.batch_id, {}).setdefault(result.line, result)

    async def done_lines(self, batch_id: str) -> set[int]:
        return set(self._results.get(batch_id, {}))

    async def read(self, batch_id: str, *, ok: bool, after_line: int = 0, limit: int = 1000) -> list[RequestResult]:
        rows = self._results.get(batch_id, {})
        lines = sorted(line for line, r in rows.items() if r.ok is ok and line > after_line)
        return [rows[line] for line in lines[:limit]]

    async def totals(self, batch_id: str) -> ResultTotals:
        rows = list(self._results.get(batch_id, {}).values())
        return ResultTotals(
            completed=sum(r.ok for r in rows),
            failed=sum(not r.ok for r in rows),
            input_tokens=sum(r.input_tokens for r in rows),
            output_tokens=sum(r.output_tokens for r in rows),
            cached_tokens=sum(r.cached_tokens for r in rows),
            reasoning_tokens=sum(r.reasoning_tokens for r in rows),
        )

    async def delete(self, batch_id: str) -> None:
        self._results.pop(batch_id, None)


@dataclass(slots=True)
class _LeaseRow:
    holder: str
    expires_at: float
    epoch: int
    failures: int


class MemoryLeases:
    """A :class:`~llama_batches.storage.base.Leases` in a dict (synchronous steps: atomic in one event loop)."""

    def __init__(self, name: str = "leases") -> None:
        self.name = name
        self._rows: dict[str, _LeaseRow] = {}

    def epoch(self, key: str) -> int:
        """The key's current epoch (0 when never acquired)."""
        row = self._rows.get(key)
        return row.epoch if row is not None else 0

    def _take(self, key: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        row = self._rows.get(key)
        if row is not None and row.expires_at > now:
            return None
        if row is None:
            row = self._rows[key] = _LeaseRow("", now + ttl_s, 0, 0)
        row.failures += bool(row.holder)  # its holder never released it: it died holding it
        row.holder, row.expires_at, row.epoch = holder, now + ttl_s, row.epoch + 1
        return Lease(key, holder, row.epoch, row.failures)

    async def acquire(self, key: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        return self._take(key, holder, ttl_s, now)

    async def claim(
        self, table: Table[Any], tags: Sequence[str], holder: str, ttl_s: float, now: float, *, limit: int
    ) -> builtins.list[tuple[str, Lease]]:
        if not isinstance(table, MemoryTable):
            raise TypeError("a memory lease table claims records of a memory table")
        claimed: builtins.list[tuple[str, Lease]] = []
        for owner, key in table.tagged(tags):
            if len(claimed) >= limit:
                break
            lease = self._take(key, holder, ttl_s, now)
            if lease is not None:
                claimed.append((owner, lease))
        return claimed

    def _is_current(self, lease: Lease) -> _LeaseRow | None:
        row = self._rows.get(lease.key)
        held = row is not None and row.epoch == lease.epoch and row.holder == lease.holder
        return row if held else None

    async def renew(self, lease: Lease, ttl_s: float, now: float) -> bool:
        row = self._is_current(lease)
        if row is None:
            return False
        row.expires_at = now + ttl_s
        return True

    async def release(self, lease: Lease, *, until: float = 0.0, failed: bool = False) -> None:
        row = self._is_current(lease)
        if row is not None:
            row.holder, row.expires_at, row.failures = "", until, row.failures + int(failed)

    async def holder(self, key: str, now: float) -> str | None:
        row = self._rows.get(key) if storable(key) else None
        return row.holder if row is not None and row.holder and row.expires_at > now else None

    async def current(self, key: str) -> Lease | None:
        row = self._rows.get(key) if storable(key) else None
        return Lease(key, row.holder, row.epoch, row.failures) if row is not None else None

    def fence(self, lease: Lease) -> Fence:
        return Fence(self.name, lease.key, lease.epoch)
