"""The storage contract: typed tables of records, each row owned by a principal.

A :class:`Table` keeps pydantic records that have an ``id`` and a ``created_at``. It offers what the providers
need and nothing they would have to build from a string KV: atomic insert-if-absent, compare-and-set on a row
version, and listing that costs one page (cursor on ``created_at`` then insertion order, newest first by default).
Every backend (SQLite, Postgres, memory) implements it and passes the same conformance tests.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from ..api.common import Order

__all__ = [
    "Leases",
    "Page",
    "Record",
    "RequestResult",
    "ResultLog",
    "ResultTotals",
    "Stored",
    "Table",
    "TableFactory",
    "check_identifier",
]


class Record(Protocol):
    """What a table needs of a record."""

    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> int: ...


R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Stored(Generic[R]):
    """A record as stored, with the version that :meth:`Table.replace` compares against."""

    value: R
    version: int


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    """One page of a list and whether more follow."""

    items: list[R]
    has_more: bool


class Table(Protocol[R]):
    """Records of one type, scoped by owner. ``tag`` is an optional indexed label used to filter lists
    (a file's purpose, a batch's status)."""

    async def insert(self, owner: str, record: R, *, tag: str | None = None) -> bool:
        """Insert ``record`` unless one with its id exists for ``owner``; True when inserted. Atomic."""
        ...

    async def get(self, owner: str, record_id: str) -> Stored[R] | None:
        """The record and its version, or None."""
        ...

    async def replace(self, owner: str, record: R, *, expected_version: int, tag: str | None = None) -> bool:
        """Compare-and-set: store ``record`` only if the row is still at ``expected_version``; True when stored."""
        ...

    async def delete(self, owner: str, record_id: str) -> bool:
        """Delete the record; True when it existed."""
        ...

    async def list(
        self,
        owner: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = Order.desc,
        tag: str | None = None,
    ) -> Page[R]:
        """One page of ``owner``'s records by ``created_at`` (then insertion order), starting after the record
        ``after``; only those with ``tag`` when given."""
        ...

    async def list_tagged(self, tags: Sequence[str], *, limit: int = 1000) -> builtins.list[tuple[str, Stored[R]]]:
        """Records of every owner whose tag is one of ``tags``, oldest first, with their owners (for workers
        looking for batches to run; an index on the tag keeps it cheap)."""
        ...


@dataclass(frozen=True, slots=True)
class RequestResult:
    """The outcome of one request of a batch: its complete output line, and its token usage."""

    batch_id: str
    line: int
    custom_id: str
    ok: bool
    output: bytes
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ResultTotals:
    """What a batch's recorded results add up to."""

    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class ResultLog(Protocol):
    """The checkpoint of every finished request, so that a batch resumes without re-running any of them."""

    async def record(self, owner: str, results: Sequence[RequestResult]) -> None:
        """Store ``results`` in one transaction; a (batch, line) already stored is kept as it was."""
        ...

    async def done_lines(self, batch_id: str) -> set[int]:
        """The input lines of ``batch_id`` that have a result."""
        ...

    async def read(self, batch_id: str, *, ok: bool, after_line: int = 0, limit: int = 1000) -> list[RequestResult]:
        """Up to ``limit`` successful (``ok``) or failed results of ``batch_id`` after ``after_line``, by line."""
        ...

    async def totals(self, batch_id: str) -> ResultTotals:
        """Counts and token sums of ``batch_id``'s results."""
        ...

    async def delete(self, batch_id: str) -> None:
        """Forget ``batch_id``'s results."""
        ...


class Leases(Protocol):
    """Time-limited exclusive claims on keys (a batch id), so that exactly one worker runs a batch and another
    takes it over when the holder stops renewing (it crashed). Every operation is one atomic statement."""

    async def acquire(self, key: str, holder: str, ttl_s: float, now: float) -> bool:
        """Take ``key`` for ``ttl_s`` if nobody holds it, its lease expired, or ``holder`` already holds it."""
        ...

    async def renew(self, key: str, holder: str, ttl_s: float, now: float) -> bool:
        """Extend ``holder``'s lease; False when it was lost (expired and taken by another)."""
        ...

    async def release(self, key: str, holder: str) -> None:
        """Give ``key`` up, if ``holder`` holds it."""
        ...

    async def holder(self, key: str, now: float) -> str | None:
        """Who holds ``key`` now, if anyone."""
        ...


class TableFactory(Protocol):
    """Opens tables on a backend."""

    async def table(self, name: str, model: type[R]) -> Table[R]:
        """The table ``name`` holding ``model`` records, created when missing."""
        ...

    async def result_log(self, name: str) -> ResultLog:
        """The result log ``name``, created when missing."""
        ...

    async def leases(self, name: str) -> Leases:
        """The lease table ``name``, created when missing."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_identifier(name: str) -> str:
    """``name`` if it is safe as a SQL identifier; tables are named from config, never from requests."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"'{name}' is not a valid table name (letters, digits and _, at most 63 characters)")
    return name
