"""Fault-injecting wrappers around the storage contracts (any backend: memory, SQLite, Postgres) and inference.

Each wrapper implements the same Protocol as what it wraps and consults a :class:`Faults` before every call, by
method name: fail the nth call(s), fail a range of calls ("for a while"), fail every call from one on, or be slow.
They also keep what the tests need to check afterwards: which fenced writes the store accepted, under which epoch.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterable, AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from llama_batches.api import Endpoint, Files, Inference, RawResponse
from llama_batches.api.common import Order
from llama_batches.api.files import ExpiresAfter, FileDeleted, FileObject, FilePurpose, ListFilesResponse
from llama_batches.api.inference import ChatCompletion, Completion, CreateEmbeddingResponse
from llama_batches.storage import (
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
)

__all__ = [
    "Accepted",
    "Fault",
    "Faults",
    "FaultyFiles",
    "FaultyInference",
    "FaultyLeases",
    "FaultyResultLog",
    "FaultyTable",
    "InjectedFault",
]

R = TypeVar("R", bound=BaseModel)


class InjectedFault(ConnectionError):
    """The failure a wrapper raises: what a store or a network raises when it is down."""


@dataclass
class Fault:
    """When calls of one method fail, and how slow they are. Calls are counted from 1."""

    calls: set[int] = field(default_factory=set)
    """These calls fail."""
    between: tuple[int, int] | None = None
    """Calls from the first number up to (not including) the second fail: the store is down for a while."""
    from_call: int | None = None
    """Every call from this one on fails: the store is down for good."""
    delay_s: float = 0.0
    """Every call first waits this long."""
    count: int = 0
    failed: int = 0
    failed_at: list[float] = field(default_factory=list)
    """The monotonic time of every failed call."""

    def cut(self) -> None:
        """Fail every call from the next one on."""
        self.from_call = self.count + 1

    def fails(self, number: int) -> bool:
        """Whether call ``number`` fails."""
        if number in self.calls or (self.from_call is not None and number >= self.from_call):
            return True
        return self.between is not None and self.between[0] <= number < self.between[1]


class Faults:
    """The faults of one wrapper, by method name (a method without a Fault never fails)."""

    def __init__(self, **faults: Fault) -> None:
        self.by_method: dict[str, Fault] = dict(faults)

    def __getitem__(self, method: str) -> Fault:
        return self.by_method.setdefault(method, Fault())

    async def enter(self, method: str) -> None:
        """Count a call of ``method``; wait and raise as its Fault says."""
        fault = self[method]
        fault.count += 1
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.fails(fault.count):
            fault.failed += 1
            fault.failed_at.append(time.monotonic())
            raise InjectedFault(f"injected failure of {method} (call {fault.count})")


def _unwrap(table: Table[Any]) -> Table[Any]:
    return table.inner if isinstance(table, FaultyTable) else table


class FaultyTable(Generic[R]):
    """A :class:`~llama_batches.storage.Table` whose calls fail or lag as ``faults`` say."""

    def __init__(self, inner: Table[R], faults: Faults | None = None) -> None:
        self.inner = inner
        self.faults = faults or Faults()

    async def insert(self, owner: str, record: R, *, tag: str | None = None) -> bool:
        await self.faults.enter("insert")
        return await self.inner.insert(owner, record, tag=tag)

    async def get(self, owner: str, record_id: str) -> Stored[R] | None:
        await self.faults.enter("get")
        return await self.inner.get(owner, record_id)

    async def replace(self, owner: str, record: R, *, expected_version: int, tag: str | None = None) -> bool:
        await self.faults.enter("replace")
        return await self.inner.replace(owner, record, expected_version=expected_version, tag=tag)

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
        await self.faults.enter("update")
        return await self.inner.update(owner, record_id, changes, when_tags=when_tags, tag=tag, fence=fence)

    async def delete(self, owner: str, record_id: str) -> bool:
        await self.faults.enter("delete")
        return await self.inner.delete(owner, record_id)

    async def list(
        self,
        owner: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = Order.desc,
        tag: str | None = None,
    ) -> Page[R]:
        await self.faults.enter("list")
        return await self.inner.list(owner, after=after, limit=limit, order=order, tag=tag)

    async def list_tagged(self, tags: Sequence[str], *, limit: int = 1000) -> builtins.list[tuple[str, Stored[R]]]:
        await self.faults.enter("list_tagged")
        return await self.inner.list_tagged(tags, limit=limit)


@dataclass(frozen=True)
class Accepted:
    """A ``record`` the store took: when (monotonic time), under which epoch, which lines."""

    at: float
    epoch: int | None
    lines: list[int]


class FaultyResultLog:
    """A :class:`~llama_batches.storage.ResultLog` whose calls fail or lag as ``faults`` say. It keeps every
    ``record`` the store took (``accepted``) and counts those its fence refused (``refused``)."""

    def __init__(self, inner: ResultLog, faults: Faults | None = None) -> None:
        self.inner = inner
        self.faults = faults or Faults()
        self.accepted: list[Accepted] = []
        self.refused = 0

    async def record(self, owner: str, results: Sequence[RequestResult], *, fence: Fence | None = None) -> None:
        await self.faults.enter("record")
        try:
            await self.inner.record(owner, results, fence=fence)
        except LeaseLost:
            self.refused += 1
            raise
        epoch = fence.epoch if fence is not None else None
        self.accepted.append(Accepted(time.monotonic(), epoch, [r.line for r in results]))

    async def done_lines(self, batch_id: str) -> set[int]:
        await self.faults.enter("done_lines")
        return await self.inner.done_lines(batch_id)

    async def read(self, batch_id: str, *, ok: bool, after_line: int = 0, limit: int = 1000) -> list[RequestResult]:
        await self.faults.enter("read")
        return await self.inner.read(batch_id, ok=ok, after_line=after_line, limit=limit)

    async def totals(self, batch_id: str) -> ResultTotals:
        await self.faults.enter("totals")
        return await self.inner.totals(batch_id)

    async def delete(self, batch_id: str) -> None:
        await self.faults.enter("delete")
        await self.inner.delete(batch_id)


class FaultyLeases:
    """A :class:`~llama_batches.storage.Leases` whose calls fail or lag as ``faults`` say; it claims records of a
    :class:`FaultyTable` through the table it wraps. ``granted`` keeps every lease it handed out, with the
    monotonic time it did."""

    def __init__(self, inner: Leases, faults: Faults | None = None) -> None:
        self.inner = inner
        self.faults = faults or Faults()
        self.granted: list[tuple[float, Lease]] = []

    async def acquire(self, key: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        await self.faults.enter("acquire")
        lease = await self.inner.acquire(key, holder, ttl_s, now)
        self.granted.extend([(time.monotonic(), lease)] if lease is not None else [])
        return lease

    async def claim(
        self, table: Table[Any], tags: Sequence[str], holder: str, ttl_s: float, now: float, *, limit: int
    ) -> list[tuple[str, Lease]]:
        await self.faults.enter("claim")
        claimed = await self.inner.claim(_unwrap(table), tags, holder, ttl_s, now, limit=limit)
        self.granted.extend((time.monotonic(), lease) for _, lease in claimed)
        return claimed

    async def renew(self, lease: Lease, ttl_s: float, now: float) -> bool:
        await self.faults.enter("renew")
        return await self.inner.renew(lease, ttl_s, now)

    async def release(self, lease: Lease, *, until: float = 0.0, failed: bool = False) -> None:
        await self.faults.enter("release")
        await self.inner.release(lease, until=until, failed=failed)

    async def holder(self, key: str, now: float) -> str | None:
        await self.faults.enter("holder")
        return await self.inner.holder(key, now)

    async def current(self, key: str) -> Lease | None:
        await self.faults.enter("current")
        return await self.inner.current(key)

    def fence(self, lease: Lease) -> Fence:
        return self.inner.fence(lease)


class FaultyInference:
    """The batch path (``raw_request``) of an :class:`~llama_batches.api.Inference` that raises ``error`` for the
    requests whose body holds ``marker`` (what a provider with a bug does); everything else goes through.
    ``started`` keeps the monotonic time of every batch request."""

    def __init__(self, inner: Inference, marker: bytes | None = None, error: Exception | None = None) -> None:
        self.inner = inner
        self.marker = marker
        self.error = error or RuntimeError("injected provider bug")
        self.started: list[float] = []

    async def openai_chat_completion(
        self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> ChatCompletion:
        return await self.inner.openai_chat_completion(model, messages, **params)

    async def openai_completion(self, model: str, prompt: str | list[str], **params: Any) -> Completion:
        return await self.inner.openai_completion(model, prompt, **params)

    async def openai_embeddings(self, model: str, input: str | list[str], **params: Any) -> CreateEmbeddingResponse:
        return await self.inner.openai_embeddings(model, input, **params)

    async def raw_request(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        self.started.append(time.monotonic())
        if self.marker is not None and self.marker in body:
            raise self.error
        return await self.inner.raw_request(endpoint, model, body)


class FaultyFiles:
    """A :class:`~llama_batches.api.Files` whose uploads of ``purpose`` wait ``upload_delay_s`` first (a large
    output file, a slow disk) as many times as ``slow_uploads`` says; everything else goes through."""

    def __init__(self, inner: Files, *, purpose: FilePurpose, upload_delay_s: float, slow_uploads: int = 1) -> None:
        self.inner = inner
        self.purpose = purpose
        self.upload_delay_s = upload_delay_s
        self.slow_uploads = slow_uploads
        self.slow_started = asyncio.Event()

    async def openai_upload_file(
        self,
        file: AsyncIterable[bytes],
        purpose: FilePurpose,
        filename: str,
        expires_after: ExpiresAfter | None = None,
    ) -> FileObject:
        if purpose is self.purpose and self.slow_uploads > 0:
            self.slow_uploads -= 1
            self.slow_started.set()
            await asyncio.sleep(self.upload_delay_s)
        return await self.inner.openai_upload_file(file, purpose, filename, expires_after)

    async def openai_list_files(
        self,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = Order.desc,
        purpose: FilePurpose | None = None,
    ) -> ListFilesResponse:
        return await self.inner.openai_list_files(after, limit, order, purpose)

    async def openai_retrieve_file(self, file_id: str) -> FileObject:
        return await self.inner.openai_retrieve_file(file_id)

    async def openai_retrieve_file_content(self, file_id: str) -> AsyncIterator[bytes]:
        return await self.inner.openai_retrieve_file_content(file_id)

    async def openai_delete_file(self, file_id: str) -> FileDeleted:
        return await self.inner.openai_delete_file(file_id)
