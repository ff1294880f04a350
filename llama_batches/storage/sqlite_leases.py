"""SQLite leases and fences; their statements are in ``sql/sqlite/leases.sql``.

A lease row is never deleted: releasing it clears its holder, so its epoch (the fencing token) only grows. A fenced
write checks the epoch inside a ``BEGIN IMMEDIATE`` transaction (see :meth:`SqliteDatabase.transaction`), which
holds the database's write lock from the check to the commit, so no other connection or process can acquire the
key in between.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

from .base import Fence, Lease, LeaseLost, Table, check_identifier, storable
from .schema import Dialect, queries

if TYPE_CHECKING:
    from .sqlite import SqliteDatabase

__all__ = ["SqliteLeases", "check_fence"]

_LEASES_SQL = queries(Dialect.sqlite, "leases")
_LEASE_TAKE = _LEASES_SQL["take"]
_LEASE_CANDIDATES = _LEASES_SQL["candidates"]
_LEASE_RENEW = _LEASES_SQL["renew"]
_LEASE_RELEASE = _LEASES_SQL["release"]
_LEASE_HOLDER = _LEASES_SQL["holder"]
_LEASE_CURRENT = _LEASES_SQL["current"]
_FENCE_EPOCH = _LEASES_SQL["fence_epoch"]


async def check_fence(conn: aiosqlite.Connection, fence: Fence) -> None:
    """Raise :class:`LeaseLost` unless ``fence``'s lease is still at its epoch; call it inside the write's
    transaction, so that the check holds until the write commits."""
    sql = _FENCE_EPOCH.format(t=check_identifier(fence.table))
    async with conn.execute(sql, (fence.key,)) as cursor:
        row = await cursor.fetchone()
    if row is None or int(row[0]) != fence.epoch:
        raise LeaseLost(fence.key, fence.epoch)


class SqliteLeases:
    """A :class:`~llama_batches.storage.base.Leases` in a SQLite table: one row per key, ``(holder, expires_at,
    epoch, failures)``, the holder ``''`` once released."""

    def __init__(self, db: SqliteDatabase, name: str) -> None:
        self._db = db
        self.name = check_identifier(name)

    def _sql(self, template: str, **parts: str) -> str:
        return template.format(t=self.name, **parts)

    async def _take(self, conn: aiosqlite.Connection, key: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        async with conn.execute(self._sql(_LEASE_TAKE), (key, holder, now + ttl_s, now)) as cursor:
            rows = list(await cursor.fetchall())
        return Lease(key, holder, int(rows[0][0]), int(rows[0][1])) if rows else None

    async def acquire(self, key: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        conn = await self._db.connection()
        async with self._db.write_lock:
            return await self._take(conn, key, holder, ttl_s, now)

    def _table_name(self, table: Table[Any]) -> str:
        """The name of ``table``, which must be a table of this lease table's database (a SqliteTable: only those
        carry it as ``database``)."""
        opened: Any = table
        if getattr(opened, "database", None) is not self._db:
            raise TypeError("a SQLite lease table claims records of a table opened on the same SqliteDatabase")
        return str(opened.name)

    async def claim(
        self, table: Table[Any], tags: Sequence[str], holder: str, ttl_s: float, now: float, *, limit: int
    ) -> builtins.list[tuple[str, Lease]]:
        name = self._table_name(table)
        if not tags or limit <= 0:
            return []
        sql = self._sql(_LEASE_CANDIDATES, table=name, marks=", ".join("?" * len(tags)))
        claimed: builtins.list[tuple[str, Lease]] = []
        async with self._db.transaction() as conn:
            async with conn.execute(sql, (*tags, now, limit)) as cursor:
                candidates = list(await cursor.fetchall())
            for owner, key in candidates:
                lease = await self._take(conn, str(key), holder, ttl_s, now)
                if lease is not None:
                    claimed.append((str(owner), lease))
        return claimed

    async def renew(self, lease: Lease, ttl_s: float, now: float) -> bool:
        params = (now + ttl_s, lease.key, lease.epoch, lease.holder)
        return await self._db.write(self._sql(_LEASE_RENEW), params) == 1

    async def release(self, lease: Lease, *, until: float = 0.0, failed: bool = False) -> None:
        params = (until, int(failed), lease.key, lease.epoch, lease.holder)
        await self._db.write(self._sql(_LEASE_RELEASE), params)

    async def holder(self, key: str, now: float) -> str | None:
        if not storable(key):
            return None
        conn = await self._db.connection()
        async with conn.execute(self._sql(_LEASE_HOLDER), (key, now)) as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row is not None else None

    async def current(self, key: str) -> Lease | None:
        if not storable(key):
            return None
        conn = await self._db.connection()
        async with conn.execute(self._sql(_LEASE_CURRENT), (key,)) as cursor:
            row = await cursor.fetchone()
        return Lease(key, str(row[0]), int(row[1]), int(row[2])) if row is not None else None

    def fence(self, lease: Lease) -> Fence:
        return Fence(self.name, lease.key, lease.epoch)
