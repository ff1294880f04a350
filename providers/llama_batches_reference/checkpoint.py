"""Group commit of finished requests: results are written in one transaction per flush, and a flush starts as soon
as the previous one ends, so the store sees a handful of commits per second per batch instead of one per request,
and at most one flush's worth of results is unrecorded at any moment."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from llama_batches.storage import RequestResult, ResultLog

__all__ = ["Checkpointer"]


class Checkpointer:
    """Collects results and records them in the background."""

    def __init__(
        self,
        log: ResultLog,
        owner: str,
        on_flush: Callable[[Sequence[RequestResult]], Awaitable[None]] | None = None,
    ) -> None:
        self._log = log
        self._owner = owner
        self._on_flush = on_flush
        self._pending: list[RequestResult] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, result: RequestResult) -> None:
        """Queue ``result``; a flush starts unless one is running."""
        self._pending.append(result)
        if self._task is None or self._task.done():
            if self._task is not None and self._task.exception() is not None:
                return  # close() reports the failure
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await self._log.record(self._owner, batch)
            if self._on_flush is not None:
                await self._on_flush(batch)

    async def close(self) -> None:
        """Record everything queued; raises what a flush raised."""
        while self._task is not None:
            task, self._task = self._task, None
            await task
            if self._pending:
                self._task = asyncio.create_task(self._drain())
