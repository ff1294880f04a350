"""Engines (workers) built by hand on one database, each with its own scheduler and fault-injecting stores, beside
a real stack that gives them files, models and inference on the fake backend over HTTP.

    async with Workers.start(stack, MemoryDatabase(), engine_config()) as workers:
        first = await workers.add(log_faults=Faults(record=Fault(between=(2, 5))))
        batch = await workers.create(lines)
        done = await workers.wait(batch.id)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from llama_batches import Stack
from llama_batches.api import TERMINAL_BATCH_STATUSES, Batch, FilePurpose, Files, Inference
from llama_batches.storage import TableFactory
from llama_batches_reference.batches import ReferenceBatchesImpl
from llama_batches_reference.config import ReferenceBatchesImplConfig
from llama_batches_reference.records import BatchRecord

from .conformance.batches import CHAT, chat_line, jsonl
from .conformance.files import chunks, read_all
from .faults import Faults, FaultyLeases, FaultyResultLog, FaultyTable

__all__ = ["Worker", "Workers", "engine_config", "parse_lines"]


def engine_config(**settings: Any) -> ReferenceBatchesImplConfig:
    """An engine that retries and polls fast, so failure paths take milliseconds."""
    defaults: dict[str, Any] = {
        "kvstore": {"backend": "unused", "namespace": "unused"},
        "retry_initial_delay_s": 0.001,
        "retry_max_delay_s": 0.01,
        "batch_retry_initial_delay_s": 0.01,
        "batch_retry_max_delay_s": 0.05,
        "store_retry_timeout_s": 0.3,
        "poll_interval_s": 0.02,
        "lease_ttl_s": 1.0,
        "max_attempts": 3,
    }
    return ReferenceBatchesImplConfig.model_validate(defaults | settings)


def parse_lines(content: bytes) -> list[dict[str, Any]]:
    """Every line of an output or error file, parsed (fails on a line that is not one JSON object)."""
    parsed = [orjson.loads(line) for line in content.split(b"\n") if line]
    assert all(isinstance(line, dict) for line in parsed)
    return parsed


@dataclass
class Worker:
    """One engine and the faulty stores it writes through."""

    engine: ReferenceBatchesImpl
    table: FaultyTable[BatchRecord]
    log: FaultyResultLog
    leases: FaultyLeases


class Workers:
    """Engines on one database and namespace."""

    def __init__(self, stack: Stack, db: TableFactory, config: ReferenceBatchesImplConfig) -> None:
        self.stack = stack
        self.db = db
        self.config = config
        self.namespace = f"e{uuid.uuid4().hex[:10]}"
        self.workers: list[Worker] = []

    @classmethod
    @asynccontextmanager
    async def start(cls, stack: Stack, db: TableFactory, config: ReferenceBatchesImplConfig) -> AsyncIterator[Workers]:
        """Workers that are all stopped on exit."""
        workers = cls(stack, db, config)
        try:
            yield workers
        finally:
            await workers.stop()

    async def add(
        self,
        *,
        table_faults: Faults | None = None,
        log_faults: Faults | None = None,
        lease_faults: Faults | None = None,
        inference: Inference | None = None,
        files: Files | None = None,
        clock: Callable[[], float] = time.time,
        **settings: Any,
    ) -> Worker:
        """A new engine (a worker, unless ``execute=False``) with the given faults, started."""
        ns, db = self.namespace, self.db
        table = FaultyTable(await db.table(f"{ns}_batches", BatchRecord), table_faults)
        log = FaultyResultLog(await db.result_log(f"{ns}_requests"), log_faults)
        leases = FaultyLeases(await db.leases(f"{ns}_leases"), lease_faults)
        config = self.config.model_copy(update=settings)
        stack = self.stack
        engine = ReferenceBatchesImpl(
            config, table, log, leases, files or stack.files, stack.models, inference or stack.inference, clock=clock
        )
        await engine.initialize()
        worker = Worker(engine, table, log, leases)
        self.workers.append(worker)
        return worker

    async def stop(self) -> None:
        """Stop every engine."""
        for worker in self.workers:
            await worker.engine.shutdown()

    async def create(self, lines: list[dict[str, Any]] | bytes, *, via: Worker | None = None, **params: Any) -> Batch:
        """Upload ``lines`` and create a batch of them (through ``via``, else the first worker)."""
        data = lines if isinstance(lines, bytes) else jsonl(lines)
        file = await self.stack.files.openai_upload_file(chunks([data]), FilePurpose.batch, "in.jsonl")
        engine = (via or self.workers[0]).engine
        return await engine.create_batch(file.id, CHAT, "24h", **params)

    async def wait(self, batch_id: str, timeout: float = 30.0) -> Batch:
        """The batch once terminal (fails the test after ``timeout``)."""
        engine = self.workers[0].engine
        async with asyncio.timeout(timeout):
            while (batch := await engine.retrieve_batch(batch_id)).status not in TERMINAL_BATCH_STATUSES:
                await asyncio.sleep(0.01)
        return batch

    async def files(self, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The lines of the batch's output file and of its error file."""
        found: list[list[dict[str, Any]]] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            content = await read_all(self.stack.files, file_id) if file_id is not None else b""
            found.append(parse_lines(content))
        return found[0], found[1]

    async def results(self, batch: Batch) -> list[dict[str, Any]]:
        """The lines of the batch's output and error files together."""
        output, errors = await self.files(batch)
        return output + errors


def requests(count: int, tag: str = "") -> list[dict[str, Any]]:
    """``count`` chat request lines whose contents (the fake backend's identity keys) start with ``tag``."""
    return [chat_line(i, content=f"{tag}request {i}") for i in range(count)]
