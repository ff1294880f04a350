"""PostgreSQL backend (asyncpg): every SQL statement this backend runs is in this module.

One connection pool per database, shared by every table opened on it. Schema is created on first use under an
advisory lock (several processes may start at once), and columns added later are added with ``ADD COLUMN IF NOT
EXISTS``, so starting a newer version migrates an older database in place.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel

from ..api.common import Order
from ..errors import MissingExtraError
from .base import Leases, Page, Record, RequestResult, ResultLog, ResultTotals, Stored, Table, check_identifier
from .config import PostgresBackendConfig

__all__ = ["PostgresDatabase", "PostgresLeases", "PostgresResultLog", "PostgresTable"]

R = TypeVar("R", bound=BaseModel)

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS {t} (
        seq BIGSERIAL PRIMARY KEY,
        owner TEXT NOT NULL,
        id TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        tag TEXT,
        version INTEGER NOT NULL DEFAULT 1,
        data TEXT NOT NULL,
        UNIQUE (owner, id))""",
    "CREATE INDEX IF NOT EXISTS {t}_by_time ON {t} (owner, created_at, seq)",
    "CREATE INDEX IF NOT EXISTS {t}_by_tag ON {t} (owner, tag, created_at, seq)",
    "CREATE INDEX IF NOT EXISTS {t}_by_tag_only ON {t} (tag, created_at, seq)",
]
_INSERT = "INSERT INTO {t} (owner, id, created_at, tag, data) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
_GET = "SELECT data, version FROM {t} WHERE owner = $1 AND id = $2"
_REPLACE = "UPDATE {t} SET data = $1, tag = $2, version = version + 1 WHERE owner = $3 AND id = $4 AND version = $5"
_DELETE = "DELETE FROM {t} WHERE owner = $1 AND id = $2"
_LIST = (
    "SELECT data FROM {t} WHERE owner = $1 AND ($2::text IS NULL OR tag = $2) {cursor} "
    "ORDER BY created_at {direction}, seq {direction} LIMIT $3"
)
_CURSOR = "AND (created_at, seq) {cmp} (SELECT created_at, seq FROM {t} WHERE owner = $1 AND id = $4)"
_LIST_TAGGED = "SELECT owner, data, version FROM {t} WHERE tag = ANY($1::text[]) ORDER BY created_at, seq LIMIT $2"

_RESULTS_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS {t} (
        batch_id TEXT NOT NULL,
        line INTEGER NOT NULL,
        owner TEXT NOT NULL,
        custom_id TEXT NOT NULL,
        ok BOOLEAN NOT NULL,
        output BYTEA NOT NULL,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cached_tokens BIGINT NOT NULL DEFAULT 0,
        reasoning_tokens BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (batch_id, line))""",
    "CREATE INDEX IF NOT EXISTS {t}_by_outcome ON {t} (batch_id, ok, line)",
]
_RESULTS_INSERT = (
    "INSERT INTO {t} (batch_id, line, owner, custom_id, ok, output, input_tokens, output_tokens, cached_tokens, "
    "reasoning_tokens) SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::bool[], $6::bytea[], "
    "$7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) ON CONFLICT DO NOTHING"
)
_RESULTS_LINES = "SELECT line FROM {t} WHERE batch_id = $1"
_RESULTS_READ = (
    "SELECT batch_id, line, custom_id, ok, output, input_tokens, output_tokens, cached_tokens, reasoning_tokens "
    "FROM {t} WHERE batch_id = $1 AND ok = $2 AND line > $3 ORDER BY line LIMIT $4"
)
_RESULTS_TOTALS = (
    "SELECT COUNT(*) FILTER (WHERE ok), COUNT(*) FILTER (WHERE NOT ok), COALESCE(SUM(input_tokens), 0), "
    "COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(reasoning_tokens), 0) "
    "FROM {t} WHERE batch_id = $1"
)
_RESULTS_DELETE = "DELETE FROM {t} WHERE batch_id = $1"

_LEASES_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)"
]
_LEASE_ACQUIRE = (
    "INSERT INTO {t} (key, holder, expires_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO UPDATE "
    "SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at WHERE {t}.expires_at <= $4 OR {t}.holder = $2"
)
_LEASE_RENEW = "UPDATE {t} SET expires_at = $1 WHERE key = $2 AND holder = $3"
_LEASE_RELEASE = "DELETE FROM {t} WHERE key = $1 AND holder = $2"
_LEASE_HOLDER = "SELECT holder FROM {t} WHERE key = $1 AND expires_at > $2"


def _count(status: str) -> int:
    """The row count of an asyncpg command status (``INSERT 0 1``, ``UPDATE 1``)."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresDatabase:
    """A PostgreSQL database shared by the tables opened on it."""

    def __init__(self, config: PostgresBackendConfig) -> None:
        self.config = config
        self._pool: Any = None

    async def pool(self) -> Any:
        """The connection pool (opened on first use)."""
        if self._pool is None:
            try:
                import asyncpg
            except ImportError as exc:
                raise MissingExtraError(
                    self.config.type.value, "asyncpg", "pip install 'llama-batches[postgres]'"
                ) from exc
            self._pool = await asyncpg.create_pool(
                host=self.config.host,
                port=self.config.port,
                database=self.config.db,
                user=self.config.user,
                password=self.config.password,
                min_size=1,
                max_size=self.config.pool_size,
            )
        return self._pool

    async def migrate(self, name: str, statements: Sequence[str]) -> None:
        """Create (or update) the schema of ``name``, one process at a time."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", name)
            for statement in statements:
                await conn.execute(statement.format(t=name))

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a write statement; its row count."""
        pool = await self.pool()
        return _count(await pool.execute(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of a query."""
        pool = await self.pool()
        return list(await pool.fetch(sql, *args))

    async def table(self, name: str, model: type[R]) -> Table[R]:
        """The table ``name`` of ``model`` records, created when missing."""
        await self.migrate(check_identifier(name), _SCHEMA)
        return PostgresTable(self, name, model)

    async def result_log(self, name: str) -> ResultLog:
        """The result log ``name``, created when missing."""
        await self.migrate(check_identifier(name), _RESULTS_SCHEMA)
        return PostgresResultLog(self, name)

    async def leases(self, name: str) -> Leases:
        """The lease table ``name``, created when missing."""
        await self.migrate(check_identifier(name), _LEASES_SCHEMA)
        return PostgresLeases(self, name)

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


class PostgresTable(Generic[R]):
    """A :class:`~llama_batches.storage.base.Table` in PostgreSQL."""

    def __init__(self, db: PostgresDatabase, name: str, model: type[R]) -> None:
        self._db = db
        self._name = name
        self._model = model

    def _sql(self, template: str, **parts: str) -> str:
        return template.format(t=self._name, **parts)

    async def insert(self, owner: str, record: R, *, tag: str | None = None) -> bool:
        rec = cast(Record, record)
        sql = self._sql(_INSERT)
        return await self._db.execute(sql, owner, rec.id, rec.created_at, tag, record.model_dump_json()) == 1

    async def get(self, owner: str, record_id: str) -> Stored[R] | None:
        rows = await self._db.fetch(self._sql(_GET), owner, record_id)
        return Stored(self._model.model_validate_json(rows[0][0]), int(rows[0][1])) if rows else None

    async def replace(self, owner: str, record: R, *, expected_version: int, tag: str | None = None) -> bool:
        args = (record.model_dump_json(), tag, owner, cast(Record, record).id, expected_version)
        return await self._db.execute(self._sql(_REPLACE), *args) == 1

    async def delete(self, owner: str, record_id: str) -> bool:
        return await self._db.execute(self._sql(_DELETE), owner, record_id) == 1

    async def list(
        self,
        owner: str,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = Order.desc,
        tag: str | None = None,
    ) -> Page[R]:
        direction, cmp = ("DESC", "<") if order is Order.desc else ("ASC", ">")
        cursor = self._sql(_CURSOR, cmp=cmp) if after is not None else ""
        sql = self._sql(_LIST, cursor=cursor, direction=direction)
        args: tuple[Any, ...] = (owner, tag, limit + 1) + ((after,) if after is not None else ())
        rows = await self._db.fetch(sql, *args)
        items = [self._model.model_validate_json(row[0]) for row in rows[:limit]]
        return Page(items, has_more=len(rows) > limit)

    async def list_tagged(self, tags: Sequence[str], *, limit: int = 1000) -> builtins.list[tuple[str, Stored[R]]]:
        rows = await self._db.fetch(self._sql(_LIST_TAGGED), list(tags), limit)
        return [(str(row[0]), Stored(self._model.model_validate_json(row[1]), int(row[2]))) for row in rows]


class PostgresResultLog:
    """A :class:`~llama_batches.storage.base.ResultLog` in PostgreSQL: a flush is one INSERT over arrays."""

    def __init__(self, db: PostgresDatabase, name: str) -> None:
        self._db = db
        self._name = name

    async def record(self, owner: str, results: Sequence[RequestResult]) -> None:
        if not results:
            return
        columns = (
            [r.batch_id for r in results], [r.line for r in results], [owner] * len(results),
            [r.custom_id for r in results], [r.ok for r in results], [r.output for r in results],
            [r.input_tokens for r in results], [r.output_tokens for r in results],
            [r.cached_tokens for r in results], [r.reasoning_tokens for r in results],
        )  # fmt: skip
        await self._db.execute(_RESULTS_INSERT.format(t=self._name), *columns)

    async def done_lines(self, batch_id: str) -> set[int]:
        return {int(row[0]) for row in await self._db.fetch(_RESULTS_LINES.format(t=self._name), batch_id)}

    async def read(self, batch_id: str, *, ok: bool, after_line: int = 0, limit: int = 1000) -> list[RequestResult]:
        rows = await self._db.fetch(_RESULTS_READ.format(t=self._name), batch_id, ok, after_line, limit)
        return [
            RequestResult(str(r[0]), int(r[1]), str(r[2]), bool(r[3]), bytes(r[4]), *map(int, r[5:9])) for r in rows
        ]

    async def totals(self, batch_id: str) -> ResultTotals:
        rows = await self._db.fetch(_RESULTS_TOTALS.format(t=self._name), batch_id)
        return ResultTotals(*(int(v) for v in rows[0])) if rows else ResultTotals()

    async def delete(self, batch_id: str) -> None:
        await self._db.execute(_RESULTS_DELETE.format(t=self._name), batch_id)


class PostgresLeases:
    """A :class:`~llama_batches.storage.base.Leases` in PostgreSQL (one statement per operation)."""

    def __init__(self, db: PostgresDatabase, name: str) -> None:
        self._db = db
        self._name = name

    async def acquire(self, key: str, holder: str, ttl_s: float, now: float) -> bool:
        return await self._db.execute(_LEASE_ACQUIRE.format(t=self._name), key, holder, now + ttl_s, now) == 1

    async def renew(self, key: str, holder: str, ttl_s: float, now: float) -> bool:
        return await self._db.execute(_LEASE_RENEW.format(t=self._name), now + ttl_s, key, holder) == 1

    async def release(self, key: str, holder: str) -> None:
        await self._db.execute(_LEASE_RELEASE.format(t=self._name), key, holder)

    async def holder(self, key: str, now: float) -> str | None:
        rows = await self._db.fetch(_LEASE_HOLDER.format(t=self._name), key, now)
        return str(rows[0][0]) if rows else None
