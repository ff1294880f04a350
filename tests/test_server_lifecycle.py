"""The server's life: a graceful stop keeps batches resumable, and the embedded default needs nothing but itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai

from .conformance.batches import chat_line, jsonl
from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config


async def test_a_graceful_stop_leaves_batches_that_the_next_server_finishes(
    tmp_path: Path, fake_backend: FakeBackend
) -> None:
    fake_backend.latency_s = 0.02
    config = reference_config(tmp_path, fake_backend, max_concurrent_requests_per_batch=4)
    async with ServerProcess(config, tmp_path) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused")
        uploaded = await client.files.create(
            file=("in.jsonl", jsonl([chat_line(i) for i in range(150)])), purpose="batch"
        )
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        async with asyncio.timeout(30):
            while fake_backend.succeeded < 20:
                await asyncio.sleep(0.01)
        await client.close()
        # SIGTERM: uvicorn shuts the stack down, then re-raises the signal, hence -15 rather than 0
        assert await server.stop() in (0, -15)
    stopped_at = fake_backend.succeeded
    assert stopped_at < 150

    async with ServerProcess(config, tmp_path) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused")
        async with asyncio.timeout(30):
            while (batch := await client.batches.retrieve(batch.id)).status != "completed":
                await asyncio.sleep(0.05)
        output = (await client.files.content(batch.output_file_id or "")).text
        await client.close()
    assert batch.request_counts is not None and batch.request_counts.completed == 150
    assert len(output.splitlines()) == 150
    assert len(fake_backend.seen) == 150 and sum(c > 1 for c in fake_backend.seen.values()) <= 8
