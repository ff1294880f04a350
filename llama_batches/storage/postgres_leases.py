"""PostgreSQL leases and fences; their statements are in ``sql/postgres/leases.sql``.

A lease row is never deleted: releasing it clears its holder, so its epoch (the fencing token) only grows. A
fenced write reads the epoch ``FOR SHARE`` inside its transaction: an acquisition (an ``UPDATE`` of that row) then
waits until the write commits, and the new holder sees it. Acquisitions are conditional upserts, re-checked by
PostgreSQL on the latest row version, so of concurrent acquirers exactly one wins.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .base import Fence, Lease, LeaseLost, Table, check_identifier, storable
from .schema import Dialect, queries

if TYPE_CHECKING:
    from .postgres import PostgresDatabase

__all__ = ["PostgresLeases", "check_fence"]

_LEASES_SQL = queries(Dialect.postgres, "leases")
_LEASE_TAKE = _LEASES_SQL["take"]
_LEASE_EXISTING = _LEASES_SQL["existing"]
_LOCK_TIMEOUT = _LEASES_SQL["lock_timeout"]
_LEASE_LOCKABLE = _LEASES_SQL["lockable"]
_LEASE_CANDIDATES = _LEASES_SQL["candidates"]
_LEASE_RENEW = _LEASES_SQL["renew"]
_LEASE_RELEASE = _LEASES_SQL["release"]
_LEASE_HOLDER = _LEASES_SQL["holder"]
_LEASE_CURRENT = _LEASES_SQL["current"]
_FENCE_EPOCH = _LEASES_SQL["fence_epoch"]


async def check_fence(conn: Any, fence: Fence) -> None:
    """Raise :class:`LeaseLost` unless ``fence``'s lease is still at its epoch. Call it inside the write's
    transaction: the row stays share-locked until the commit, so the key cannot change hands in between."""
    epoch = await conn.fetchval(_FENCE_EPOCH.format(t=check_identifier(fence.table)), fence.key)
    if epoch is None or int(epoch) != fence.epoch:
        raise LeaseLost(fence.key, fence.epoch)


class PostgresLeases:
    """A :class:`~llama_batches.storage.base.Leases` in PostgreSQL: one row per key, ``(holder, expires_at, epoch,
    failures)``, the holder ``''`` once released."""

    def __init__(self, db: PostgresDatabase, name: str) -> None:
        self._db = db
        self.name = check_identifier(name)

    def _sql(self, template: str, **parts: str) -> str:
        return template.format(t=self.name, **parts)

    async def _take(
        self, executor: Any, keys: Sequence[str], holder: str, ttl_s: float, now: float
    ) -> dict[str, Lease]:
        rows = await executor.fetch(self._sql(_LEASE_TAKE), list(keys), holder, now + ttl_s, now)
        return {str(row[0]): Lease(str(row[0]), holder, int(row[1]), int(row[2])) for row in rows}

    async def acquire(self, key: str, holder: str, ttl_s: float, now: float) -> Lease | None:
        return (await self._take(await self._db.pool(), [key], holder, ttl_s, now)).get(key)

    def _table_name(self, table: Table[Any]) -> str:
        """The name of ``table``, which must be a table of this lease table's database (a PostgresTable: only those
        carry it as ``database``)."""
        opened: Any = table
        if getattr(opened, "database", None) is not self._db:
            raise TypeError("a PostgreSQL lease table claims records of a table opened on the same PostgresDatabase")
        return str(opened.name)

    async def claim(
        self, table: Table[Any], tags: Sequence[str], holder: str, ttl_s: float, now: float, *, limit: int
    ) -> builtins.list[tuple[str, Lease]]:
        sql = self._sql(_LEASE_CANDIDATES, table=self._table_name(table))
        if not tags or limit <= 0:
            return []
        async with self._db.transaction() as conn:
            await conn.execute(_LOCK_TIMEOUT)
            owners: dict[str, str] = {}
            for owner, key in await conn.fetch(sql, list(tags), now, limit):
                owners.setdefault(str(key), str(owner))
            taken = await self._take(conn, await self._free_rows(conn, list(owners)), holder, ttl_s, now)
        return [(owner, taken[key]) for key, owner in owners.items() if key in taken]

    async def renew(self, lease: Lease, ttl_s: float, now: float) -> bool:
        args = (now + ttl_s, lease.key, lease.epoch, lease.holder)
        return await self._db.execute(self._sql(_LEASE_RENEW), *args) == 1

    async def release(self, lease: Lease, *, until: float = 0.0, failed: bool = False) -> None:
        args = (until, int(failed), lease.key, lease.epoch, lease.holder)
        await self._db.execute(self._sql(_LEASE_RELEASE), *args)

    async def holder(self, key: str, now: float) -> str | None:
        if not storable(key):
            return None
        rows = await self._db.fetch(self._sql(_LEASE_HOLDER), key, now)
        return str(rows[0][0]) if rows else None

    async def current(self, key: str) -> Lease | None:
        if not storable(key):
            return None
        rows = await self._db.fetch(self._sql(_LEASE_CURRENT), key)
        return Lease(key, str(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None

    async def _free_rows(self, conn: Any, keys: list[str]) -> list[str]:
        """``keys`` less those whose lease row another transaction has locked (the expired holder's fenced write,
        still open), which the upsert would wait for; the others' rows stay locked until the claim commits."""
        existing = {str(row[0]) for row in await conn.fetch(self._sql(_LEASE_EXISTING), keys)}
        lockable = {str(row[0]) for row in await conn.fetch(self._sql(_LEASE_LOCKABLE), keys)}
        return [key for key in keys if key in lockable or key not in existing]

    def fence(self, lease: Lease) -> Fence:
        return Fence(self.name, lease.key, lease.epoch)
