"""The storage contract: typed tables of records, each row owned by a principal.

A :class:`Table` keeps pydantic records that have an ``id`` and a ``created_at``. It offers what the providers
need and nothing they would have to build from a string KV: atomic insert-if-absent, compare-and-set on a row
version, and listing that costs one page (cursor on ``created_at`` then insertion order, newest first by default).
Every backend (SQLite, Postgres, memory) implements it and passes the same conformance tests.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from ..api.common import Order
from ..errors import LlamaBatchesError

__all__ = [
    "Fence",
    "Lease",
    "LeaseLost",
    "Leases",
    "Page",
    "Record",
    "RequestResult",
    "ResultLog",
    "ResultTotals",
    "Stored",
    "Table",
    "TableFactory",
    "change_paths",
    "check_identifier",
    "storable",
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
        """One conditional write, decided by the store: set the fields in ``changes`` if the row exists and its tag
        is one of ``when_tags`` (any tag when None); ``tag``, when given, becomes the row's tag. A value that is a
        mapping sets its keys one level down (``{"batch": {"status": "failed"}}`` changes that field only, see
        :func:`change_paths`); values are JSON-compatible. Returns the record as stored after the write, or None
        when the row is missing or its tag did not match. With a ``fence``, raises :class:`LeaseLost` (and writes
        nothing) unless the fence's lease is still at its epoch."""
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

    async def record(self, owner: str, results: Sequence[RequestResult], *, fence: Fence | None = None) -> None:
        """Store ``results`` in one transaction; a (batch, line) already stored is kept as it was. With a
        ``fence``, raises :class:`LeaseLost` (and stores nothing) unless its lease is still at its epoch."""
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


class LeaseLost(LlamaBatchesError):
    """A fenced write was refused: the lease it was made under has passed to a newer holder (a higher epoch)."""

    def __init__(self, key: str, epoch: int) -> None:
        super().__init__(f"the lease on '{key}' at epoch {epoch} has passed to another holder")
        self.key = key
        self.epoch = epoch


@dataclass(frozen=True, slots=True)
class Lease:
    """A holder's claim on a key. ``epoch`` is the fencing token: it grows by one with every acquisition of the key,
    so a holder that lost the key can be told from the one that has it. ``failures`` counts, over the key's whole
    life (every holder sees it), the failed runs recorded by :meth:`Leases.release` and the holders that never
    released it (they died holding it: their lease expired and the key was taken over)."""

    key: str
    holder: str
    epoch: int
    failures: int = 0


@dataclass(frozen=True, slots=True)
class Fence:
    """Given to a write, makes it conditional: applied only while the lease on ``key`` in the lease table ``table``
    (on the same database) is still at ``epoch``. Obtained from :meth:`Leases.fence`."""

    table: str
    key: str
    epoch: int


class Leases(Protocol):
    """Time-limited exclusive claims on keys (a batch id), so that exactly one worker runs a batch and another
    takes it over when the holder stops renewing (it crashed). Every operation is atomic. A key's row outlives
    its holders: its epoch only grows, and its failure count is kept."""

    async def acquire(self, key: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        """Take ``key`` for ``ttl_s`` if it is free: never held, released, or its lease (or release delay) ended by
        ``now``. The lease returned has the next epoch, and one more failure when its last holder never released
        it; None when the key is held."""
        ...

    async def claim(
        self, table: Table[Any], tags: Sequence[str], holder: str, ttl_s: float, now: float, *, limit: int
    ) -> builtins.list[tuple[str, Lease]]:
        """Acquire the keys of up to ``limit`` records of ``table`` (a table on the same database, keyed by record
        id) whose tag is one of ``tags`` and whose key is free, oldest first; their owners and leases. Concurrent
        claimers get different records (on PostgreSQL, candidates are locked ``FOR UPDATE SKIP LOCKED``)."""
        ...

    async def renew(self, lease: Lease, ttl_s: float, now: float) -> bool:
        """Extend ``lease`` until ``now + ttl_s``; False when the key is at another epoch (it was lost)."""
        ...

    async def release(self, lease: Lease, *, until: float = 0.0, failed: bool = False) -> None:
        """Give ``lease`` up, if it is still current: nobody acquires the key before ``until`` (wall time; 0 frees
        it at once), and with ``failed`` the key's failure count grows by one."""
        ...

    async def holder(self, key: str, now: float) -> str | None:
        """Who holds ``key`` now, if anyone (a key waiting out a release delay has no holder)."""
        ...

    async def current(self, key: str) -> Lease | None:
        """The key's row as stored (its last holder, epoch and failures), whether or not it is held now."""
        ...

    def fence(self, lease: Lease) -> Fence:
        """The fence that makes writes conditional on ``lease`` still being current."""
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


def change_paths(changes: Mapping[str, Any]) -> builtins.list[tuple[tuple[str, ...], Any]]:
    """The (path, value) pairs that :meth:`Table.update` sets for ``changes``: a mapping value sets each of its keys
    one level down, any other value (lists, scalars, None) replaces the field. Every key is a checked identifier,
    since backends build JSON paths from them (keys come from code, never from requests)."""
    paths: builtins.list[tuple[tuple[str, ...], Any]] = []
    for key, value in changes.items():
        if isinstance(value, Mapping):
            paths.extend(((check_identifier(key), check_identifier(inner)), item) for inner, item in value.items())
        else:
            paths.append(((check_identifier(key),), value))
    return paths


def storable(*keys: str | None) -> bool:
    """Whether every key can be looked up in every backend: PostgreSQL text cannot hold NUL, so an id or owner with
    one names no row anywhere and is answered (None, False, an empty page) before any query."""
    return not any(key is not None and "\x00" in key for key in keys)
