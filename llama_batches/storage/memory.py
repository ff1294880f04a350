"""In-memory backend: the same :class:`~llama_batches.storage.base.Table` contract in process memory.

It mirrors the SQLite backend's ordering (``created_at`` then insertion order), atomicity and versioning, and
passes the same conformance tests, so tests and throwaway stacks can use it in place of a database.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from pydantic import BaseModel

from ..api.common import Order
from .base import Leases, Page, Record, RequestResult, ResultLog, ResultTotals, Stored, Table, check_identifier

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
            self._tables[name] = cast("MemoryTable[BaseModel]", MemoryTable(model))
        return cast("Table[R]", self._tables[name])

    async def result_log(self, name: str) -> ResultLog:
        """The result log ``name`` (the same object on every call)."""
        check_identifier(name)
        return self._logs.setdefault(name, MemoryResultLog())

    async def leases(self, name: str) -> Leases:
        """The lease table ``name`` (the same object on every call)."""
        check_identifier(name)
        return self._leases.setdefault(name, MemoryLeases())

    async def close(self) -> None:
        """Nothing to release."""


class MemoryTable(Generic[R]):
    """A :class:`~llama_batches.storage.base.Table` in a dict, guarded by one lock."""

    def __init__(self, model: type[R]) -> None:
        self._model = model
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
        row = self._rows.get((owner, record_id))
        if row is None:
            return None
        return Stored(self._model.model_validate_json(row.data), row.version)

    async def replace(self, owner: str, record: R, *, expected_version: int, tag: str | None = None) -> bool:
        key = (owner, cast(Record, record).id)
        async with self._lock:
            row = self._rows.get(key)
            if row is None or row.version != expected_version:
                return False
            row.data, row.tag, row.version = record.model_dump_json(), tag, row.version + 1
            return True

    async def delete(self, owner: str, record_id: str) -> bool:
        async with self._lock:
            return self._rows.pop((owner, record_id), None) is not None

    async def list(
        self,
        owner: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = Order.desc,
        tag: str | None = None,
    ) -> Page[R]:
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

    def __init__(self) -> None:
        self._results: dict[str, dict[int, RequestResult]] = {}

    async def record(self, owner: str, results: Sequence[RequestResult]) -> None:
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


class MemoryLeases:
    """A :class:`~llama_batches.storage.base.Leases` in a dict (synchronous steps: atomic in one event loop)."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}

    async def acquire(self, key: str, holder: str, ttl_s: float, now: float) -> bool:
        current = self._leases.get(key)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[key] = (holder, now + ttl_s)
        return True

    async def renew(self, key: str, holder: str, ttl_s: float, now: float) -> bool:
        current = self._leases.get(key)
        if current is None or current[0] != holder:
            return False
        self._leases[key] = (holder, now + ttl_s)
        return True

    async def release(self, key: str, holder: str) -> None:
        if self._leases.get(key, ("", 0.0))[0] == holder:
            del self._leases[key]

    async def holder(self, key: str, now: float) -> str | None:
        current = self._leases.get(key)
        return current[0] if current is not None and current[1] > now else None
