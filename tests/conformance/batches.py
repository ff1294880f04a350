"""The Batches conformance suite: what every batches provider must do, seen through the API.

A provider's test module binds ``env`` (a :class:`BatchesEnv` on a running stack whose inference is the fake
backend) and inherits.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest

from llama_batches.api import TERMINAL_BATCH_STATUSES, Batch, Batches, BatchStatus, FilePurpose, Files
from llama_batches.errors import ConflictError, InvalidRequestError, NotFoundError
from llama_batches.principal import acting_as

from ..fake_backend import FakeBackend
from .files import chunks, read_all

CHAT = "/v1/chat/completions"


def chat_line(i: int, *, model: str = "fake-model", content: str | None = None, **extra: Any) -> dict[str, Any]:
    """One chat request line; the fake backend counts it under ``content``."""
    body = {"model": model, "messages": [{"role": "user", "content": content or f"request {i}"}], **extra}
    return {"custom_id": f"req-{i}", "method": "POST", "url": CHAT, "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@dataclass
class BatchesEnv:
    """A running stack's batches and files, and the fake backend behind its inference."""

    batches: Batches
    files: Files
    backend: FakeBackend

    async def upload(self, content: list[dict[str, Any]] | bytes) -> str:
        data = content if isinstance(content, bytes) else jsonl(content)
        return (await self.files.openai_upload_file(chunks([data]), FilePurpose.batch, "in.jsonl")).id

    async def create(self, file_id: str, **params: Any) -> Batch:
        return await self.batches.create_batch(file_id, params.pop("endpoint", CHAT), "24h", **params)

    async def wait(self, batch_id: str, timeout: float = 30.0) -> Batch:
        async with asyncio.timeout(timeout):
            while True:
                batch = await self.batches.retrieve_batch(batch_id)
                if batch.status in TERMINAL_BATCH_STATUSES:
                    return batch
                await asyncio.sleep(0.02)

    async def lines(self, file_id: str | None) -> list[dict[str, Any]]:
        assert file_id is not None
        return [json.loads(line) for line in (await read_all(self.files, file_id)).splitlines()]


class BatchesConformance:
    """Bind ``env`` in a subclass."""

    async def test_a_batch_runs_to_completed_with_openai_shaped_output(self, env: BatchesEnv) -> None:
        file_id = await env.upload([chat_line(i) for i in range(5)])
        created = await env.create(file_id, metadata={"team": "a"})
        assert created.status == BatchStatus.validating
        assert created.expires_at == created.created_at + 86400
        done = await env.wait(created.id)
        assert done.status == BatchStatus.completed
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 5, 0)
        assert done.in_progress_at and done.finalizing_at and done.completed_at
        assert created.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
        assert done.model == "fake-model" and done.metadata == {"team": "a"}
        assert done.error_file_id is None  # a file only when it has lines
        assert done.usage is not None and done.usage.total_tokens > 0
        output = await env.lines(done.output_file_id)
        assert sorted(o["custom_id"] for o in output) == [f"req-{i}" for i in range(5)]
        first = output[0]
        assert first["id"].startswith("batch_req_") and first["error"] is None
        assert first["response"]["status_code"] == 200
        assert first["response"]["body"]["object"] == "chat.completion"
        output_file = await env.files.openai_retrieve_file(done.output_file_id or "")
        assert output_file.purpose == "batch_output"

    async def test_same_key_and_parameters_give_the_same_batch(self, env: BatchesEnv) -> None:
        file_id = await env.upload([chat_line(0)])
        first = await env.create(file_id, metadata={"a": "1", "b": "2"}, idempotency_key="k")
        again = await env.create(file_id, metadata={"b": "2", "a": "1"}, idempotency_key="k")
        assert (again.id, again.created_at) == (first.id, first.created_at)
        await env.wait(first.id)
        replay = await env.create(file_id, metadata={"a": "1", "b": "2"}, idempotency_key="k")
        assert replay.id == first.id and replay.status == BatchStatus.completed
        assert env.backend.seen == {"request 0": 1}

    @pytest.mark.parametrize(
        "change",
        [
            {"metadata": {"a": "other"}},
            {"metadata": None},
            {"metadata": {}},
            {"endpoint": "/v1/completions"},
            {"other_file": True},
        ],
        ids=["metadata-value", "metadata-none", "metadata-empty", "endpoint", "input-file"],
    )
    async def test_same_key_and_other_parameters_conflict(self, env: BatchesEnv, change: dict[str, Any]) -> None:
        change = dict(change)  # parameters are shared by every binding of the suite
        file_id = await env.upload([chat_line(0)])
        first = await env.create(file_id, metadata={"a": "1"}, idempotency_key="key-1")
        if change.pop("other_file", False):
            file_id = await env.upload([chat_line(0)])
        with pytest.raises(ConflictError) as info:
            await env.create(file_id, idempotency_key="key-1", **({"metadata": {"a": "1"}} | change))
        assert "key-1" in info.value.message and info.value.status == 409
        assert (await env.batches.retrieve_batch(first.id)).metadata == {"a": "1"}

    async def test_none_and_empty_metadata_are_different_parameters(self, env: BatchesEnv) -> None:
        file_id = await env.upload([chat_line(0)])
        await env.create(file_id, metadata=None, idempotency_key="none-first")
        with pytest.raises(ConflictError):
            await env.create(file_id, metadata={}, idempotency_key="none-first")

    async def test_without_a_key_every_create_is_a_new_batch(self, env: BatchesEnv) -> None:
        file_id = await env.upload([chat_line(0)])
        first, second = await env.create(file_id), await env.create(file_id)
        assert first.id != second.id

    async def test_concurrent_creates_with_one_key_make_one_batch_and_one_execution(self, env: BatchesEnv) -> None:
        file_id = await env.upload([chat_line(i) for i in range(20)])
        created = await asyncio.gather(*(env.create(file_id, idempotency_key="race") for _ in range(64)))
        assert len({b.id for b in created}) == 1
        done = await env.wait(created[0].id)
        assert done.request_counts is not None and done.request_counts.completed == 20
        assert len((await env.batches.list_batches(limit=100)).data) == 1
        assert sorted(env.backend.seen.values()) == [1] * 20

    async def test_the_same_key_for_two_principals_makes_two_batches(self, env: BatchesEnv) -> None:
        with acting_as("alice"):
            alice = await env.create(await env.upload([chat_line(0)]), idempotency_key="shared")
        with acting_as("bob"):
            bob = await env.create(await env.upload([chat_line(0)]), idempotency_key="shared")
            with pytest.raises(NotFoundError):
                await env.batches.retrieve_batch(alice.id)
            assert [b.id for b in (await env.batches.list_batches()).data] == [bob.id]
        assert alice.id != bob.id

    @pytest.mark.parametrize(
        ("params", "param"),
        [
            ({"endpoint": "/v1/images/generations"}, "endpoint"),
            ({"completion_window": "1h"}, "completion_window"),
            ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
            ({"metadata": {"k" * 65: "v"}}, "metadata"),
            ({"metadata": {"k": "v" * 513}}, "metadata.k"),
            ({"metadata": {"tags": ["a"]}}, "metadata.tags"),
            ({"idempotency_key": ""}, "idempotency_key"),
        ],
        ids=["endpoint", "window", "17-pairs", "long-key", "long-value", "list-value", "empty-key"],
    )
    async def test_bad_create_parameters_are_400s_that_store_nothing(
        self, env: BatchesEnv, params: dict[str, Any], param: str
    ) -> None:
        params = dict(params)  # parameters are shared by every binding of the suite
        file_id = await env.upload([chat_line(0)])
        endpoint = params.pop("endpoint", CHAT)
        window = params.pop("completion_window", "24h")
        with pytest.raises(InvalidRequestError) as info:
            await env.batches.create_batch(file_id, endpoint, window, **params)
        assert info.value.status == 400 and info.value.param == param
        assert (await env.batches.list_batches()).data == []

    async def test_a_missing_batch_is_404_on_retrieve_and_cancel(self, env: BatchesEnv) -> None:
        for call in (env.batches.retrieve_batch, env.batches.cancel_batch):
            with pytest.raises(NotFoundError):
                await call("batch_nope")

    async def test_cancelling_a_finished_batch_is_a_conflict(self, env: BatchesEnv) -> None:
        done = await env.wait((await env.create(await env.upload([chat_line(0)]))).id)
        with pytest.raises(ConflictError, match="Cannot cancel a batch with status 'completed'"):
            await env.batches.cancel_batch(done.id)

    async def test_list_is_newest_first_and_pages(self, env: BatchesEnv) -> None:
        file_id = await env.upload([chat_line(0)])
        ids = [(await env.create(file_id)).id for _ in range(5)]
        first = await env.batches.list_batches(limit=2)
        assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
        rest = await env.batches.list_batches(after=first.last_id, limit=10)
        assert [b.id for b in rest.data] == ids[::-1][2:] and not rest.has_more
        with pytest.raises(InvalidRequestError):
            await env.batches.list_batches(limit=101)
