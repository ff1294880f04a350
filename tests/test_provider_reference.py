"""inline::reference through build_stack: the conformance suite, validation, retries, cancel, expiry, limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llama_batches import build_stack
from llama_batches.api import BatchStatus, FileObject
from llama_batches.storage import MemoryDatabase
from llama_batches_reference.batches import ReferenceBatchesImpl
from llama_batches_reference.config import ReferenceBatchesImplConfig
from llama_batches_reference.records import BatchRecord

from .conformance.batches import CHAT, BatchesConformance, BatchesEnv, chat_line, jsonl
from .conftest import openai_provider, run_config
from .fake_backend import FakeBackend


def reference_config(directory: Path, backend: FakeBackend, **engine: Any) -> dict[str, Any]:
    """A run config with inline::reference on SQLite, localfs files and the fake backend."""
    settings = {"kvstore": {"backend": "sql_default", "namespace": "batches"}, "retry_initial_delay_s": 0.01, **engine}
    batches = [{"provider_id": "reference", "provider_type": "inline::reference", "config": settings}]
    return run_config(directory, openai_provider(backend.base_url), extra_providers={"batches": batches})


@pytest.fixture
async def env(tmp_path: Path, fake_backend: FakeBackend) -> AsyncIterator[BatchesEnv]:
    async with build_stack(reference_config(tmp_path, fake_backend)) as stack:
        yield BatchesEnv(stack.batches, stack.files, fake_backend)


class TestReferenceOnMemory(BatchesConformance):
    """The same suite with every store in process memory."""

    @pytest.fixture
    async def env(self, tmp_path: Path, fake_backend: FakeBackend) -> AsyncIterator[BatchesEnv]:
        config = reference_config(tmp_path, fake_backend)
        config["storage"]["backends"]["sql_default"] = {"type": "sql_memory"}
        async with build_stack(config) as stack:
            yield BatchesEnv(stack.batches, stack.files, fake_backend)


def _errors(batch: Any) -> list[tuple[int | None, str | None, str | None]]:
    return [(e.line, e.code, e.param) for e in batch.errors.data or []]


async def test_input_lines_are_validated_with_line_numbers_and_openai_codes(env: BatchesEnv) -> None:
    lines = [
        jsonl([chat_line(0)]),
        b"not json\n",
        b"\n",  # blank lines are skipped but counted
        jsonl([{"custom_id": "x", "method": "POST", "url": CHAT}]),
        jsonl([chat_line(4) | {"url": "/v1/embeddings"}]),
        jsonl([chat_line(5, stream=True)]),
        jsonl([chat_line(6, model="no-such-model")]),
        jsonl([{"custom_id": "y", "method": "POST", "url": CHAT, "body": {"messages": []}}]),
        jsonl([{"custom_id": "z", "method": "POST", "url": CHAT, "body": {"model": "fake-model"}}]),
        jsonl([chat_line(0)]),
    ]
    batch = await env.wait((await env.create(await env.upload(b"".join(lines)))).id)
    assert batch.status == BatchStatus.failed and batch.failed_at
    assert _errors(batch) == [
        (2, "invalid_json_line", None),
        (4, "missing_required_parameter", "body"),
        (5, "invalid_url", "url"),
        (6, "streaming_unsupported", "body.stream"),
        (7, "model_not_found", "body.model"),
        (8, "invalid_request", "body.model"),
        (9, "invalid_request", "body.messages"),
        (10, "duplicate_custom_id", "custom_id"),
    ]
    assert env.backend.seen == {}  # nothing runs when validation fails


async def test_a_missing_input_file_fails_the_batch_naming_input_file_id(env: BatchesEnv) -> None:
    batch = await env.wait((await env.create("file-does-not-exist")).id)
    assert batch.status == BatchStatus.failed
    assert _errors(batch) == [(None, "invalid_request", "input_file_id")]


async def test_an_empty_input_file_fails_the_batch(env: BatchesEnv) -> None:
    batch = await env.wait((await env.create(await env.upload(b"\n\n"))).id)
    assert _errors(batch) == [(None, "empty_file", "input_file_id")]


@pytest.mark.parametrize(
    ("limits", "content", "expected"),
    [
        ({"max_requests_per_batch": 3}, jsonl([chat_line(i) for i in range(4)]), (None, "too_many_requests")),
        ({"max_input_bytes": 300}, jsonl([chat_line(i) for i in range(10)]), (None, "file_too_large")),
        ({"max_line_bytes": 300}, jsonl([chat_line(0), chat_line(1, content="x" * 400)]), (2, "line_too_large")),
    ],
    ids=["lines", "bytes", "line-size"],
)
async def test_input_limits_are_configurable_and_clear(
    tmp_path: Path, fake_backend: FakeBackend, limits: dict[str, int], content: bytes, expected: tuple[Any, str]
) -> None:
    async with build_stack(reference_config(tmp_path, fake_backend, **limits)) as stack:
        env = BatchesEnv(stack.batches, stack.files, fake_backend)
        batch = await env.wait((await env.create(await env.upload(content))).id)
    assert batch.status == BatchStatus.failed
    assert batch.errors is not None and batch.errors.data
    error = batch.errors.data[0]
    assert (error.line, error.code) == expected
    assert error.message and str(next(iter(limits.values()))) in error.message


async def test_backend_faults_at_20_percent_are_retried_until_every_request_succeeds(
    tmp_path: Path, fake_backend: FakeBackend
) -> None:
    fake_backend.fail_rate = 0.2
    async with build_stack(reference_config(tmp_path, fake_backend, max_attempts=10)) as stack:
        env = BatchesEnv(stack.batches, stack.files, fake_backend)
        batch = await env.wait((await env.create(await env.upload([chat_line(i) for i in range(200)]))).id)
        output = await env.lines(batch.output_file_id)
    assert batch.status == BatchStatus.completed and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed, batch.request_counts.total) == (200, 0, 200)
    assert fake_backend.injected_failures > 20
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(200))
    assert all(count == 1 for count in fake_backend.answered.values())


async def test_requests_that_keep_failing_go_to_the_error_file_with_the_response(
    tmp_path: Path, fake_backend: FakeBackend
) -> None:
    fake_backend.fail_rate = 1.0
    async with build_stack(reference_config(tmp_path, fake_backend, max_attempts=3)) as stack:
        env = BatchesEnv(stack.batches, stack.files, fake_backend)
        batch = await env.wait((await env.create(await env.upload([chat_line(i) for i in range(4)]))).id)
        errors = await env.lines(batch.error_file_id)
    assert batch.status == BatchStatus.completed and batch.output_file_id is None
    assert batch.request_counts is not None and batch.request_counts.failed == 4
    assert fake_backend.injected_failures == 12  # 3 attempts each, then no more
    assert {e["response"]["status_code"] for e in errors} <= {429, 500}
    assert all("error" in e["response"]["body"] for e in errors)  # OpenAI's clients read the reason here,
    assert all(e["error"]["message"] == e["response"]["body"]["error"]["message"] for e in errors)  # llama-stack's


def with_models(config: dict[str, Any], *model_ids: str) -> dict[str, Any]:
    """``config`` with ``model_ids`` registered on the fake provider (known to the stack without asking it)."""
    config["registered_resources"]["models"] = [{"model_id": m, "provider_id": "fake"} for m in model_ids]
    return config


async def test_a_request_the_backend_refuses_is_not_retried(tmp_path: Path, fake_backend: FakeBackend) -> None:
    config = with_models(reference_config(tmp_path, fake_backend), "ghost")  # the backend does not have it
    async with build_stack(config) as stack:
        env = BatchesEnv(stack.batches, stack.files, fake_backend)
        content = jsonl([chat_line(0, model="ghost"), chat_line(1, model="ghost")])  # one model a batch
        batch = await env.wait((await env.create(await env.upload(content))).id)
        errors = await env.lines(batch.error_file_id)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (0, 2)
    assert fake_backend.requests["/v1/chat/completions"] == 2  # one each: a 404 is final
    assert {e["custom_id"] for e in errors} == {"req-0", "req-1"}
    assert all(e["response"]["status_code"] == 404 for e in errors)
    assert all(e["response"]["body"]["error"]["code"] == e["error"]["code"] == "model_not_found" for e in errors)


async def test_an_unreachable_backend_gives_error_lines_without_a_response(tmp_path: Path) -> None:
    backend = FakeBackend()
    await backend.start()
    config = with_models(reference_config(tmp_path, backend, max_attempts=2), "fake-model")
    await backend.stop()  # the port is closed from now on
    async with build_stack(config) as stack:
        env = BatchesEnv(stack.batches, stack.files, backend)
        batch = await env.wait((await env.create(await env.upload([chat_line(0)]))).id)
        errors = await env.lines(batch.error_file_id)
    assert batch.status == BatchStatus.completed and batch.output_file_id is None
    assert errors[0]["response"] is None
    assert errors[0]["error"]["code"] == "service_unavailable" and "cannot be reached" in errors[0]["error"]["message"]


async def test_cancel_mid_run_keeps_partial_results(tmp_path: Path, fake_backend: FakeBackend) -> None:
    fake_backend.latency_s = 0.05
    async with build_stack(reference_config(tmp_path, fake_backend, max_concurrent_requests_per_batch=2)) as stack:
        env = BatchesEnv(stack.batches, stack.files, fake_backend)
        created = await env.create(await env.upload([chat_line(i) for i in range(200)]))
        async with asyncio.timeout(30):
            while fake_backend.succeeded < 6:
                await asyncio.sleep(0.01)
        cancelling = await stack.batches.cancel_batch(created.id)
        assert cancelling.status in (BatchStatus.cancelling, BatchStatus.cancelled) and cancelling.cancelling_at
        again = await stack.batches.cancel_batch(created.id)  # cancelling twice is fine
        assert again.id == created.id
        batch = await env.wait(created.id)
        output = await env.lines(batch.output_file_id)
    assert batch.status == BatchStatus.cancelled and batch.cancelled_at
    assert batch.request_counts is not None
    assert 6 <= batch.request_counts.completed == len(output) < 200
    assert fake_backend.total_requests < 200


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_expiry_writes_partial_output_and_batch_expired_lines(tmp_path: Path, fake_backend: FakeBackend) -> None:
    """The engine built by hand around a stack's files and inference, with a clock the test moves."""
    fake_backend.latency_s = 0.05
    clock = Clock()
    async with build_stack(run_config(tmp_path, openai_provider(fake_backend.base_url))) as stack:
        config = ReferenceBatchesImplConfig.model_validate(
            {"kvstore": {"backend": "m", "namespace": "b"}, "max_concurrent_requests_per_batch": 2}
        )
        db = MemoryDatabase()
        table = await db.table("batches", BatchRecord)
        log = await db.result_log("requests")
        leases = await db.leases("leases")
        engine = ReferenceBatchesImpl(
            config, table, log, leases, stack.files, stack.models, stack.inference, clock=clock
        )
        await engine.initialize()
        env = BatchesEnv(engine, stack.files, fake_backend)
        created = await env.create(await env.upload([chat_line(i) for i in range(100)]))
        async with asyncio.timeout(30):
            while fake_backend.succeeded < 4:
                await asyncio.sleep(0.01)
        clock.now += 86400
        batch = await env.wait(created.id)
        output, errors = await env.lines(batch.output_file_id), await env.lines(batch.error_file_id)
        await engine.shutdown()
    assert batch.status == BatchStatus.expired and batch.expired_at
    assert batch.request_counts is not None and batch.request_counts.completed == len(output) >= 4
    expired = [e for e in errors if e["error"] and e["error"]["code"] == "batch_expired"]
    assert len(expired) == 100 - len(output) - batch.request_counts.failed
    assert {e["response"] for e in expired} == {None}
    assert {o["custom_id"] for o in output}.isdisjoint(e["custom_id"] for e in expired)


async def test_several_batches_progress_at_once(tmp_path: Path, fake_backend: FakeBackend) -> None:
    fake_backend.latency_s = 0.02
    async with build_stack(reference_config(tmp_path, fake_backend, max_concurrent_batches=3)) as stack:
        env = BatchesEnv(stack.batches, stack.files, fake_backend)
        ids = [
            (await env.create(await env.upload([chat_line(i, content=f"{b}-{i}") for i in range(60)]))).id
            for b in range(3)
        ]
        seen_running: set[str] = set()
        async with asyncio.timeout(30):
            while len(seen_running) < 3:
                for batch_id in ids:
                    batch = await stack.batches.retrieve_batch(batch_id)
                    assert batch.request_counts is not None
                    if batch.status == BatchStatus.in_progress and 0 < batch.request_counts.completed < 60:
                        seen_running.add(batch_id)
                await asyncio.sleep(0.01)
        done = [await env.wait(batch_id) for batch_id in ids]
    assert {b.status for b in done} == {BatchStatus.completed}


async def test_a_requests_per_minute_limit_spaces_requests(tmp_path: Path, fake_backend: FakeBackend) -> None:
    async with build_stack(reference_config(tmp_path, fake_backend, requests_per_minute=1200)) as stack:
        env = BatchesEnv(stack.batches, stack.files, fake_backend)
        started = time.monotonic()
        batch = await env.wait((await env.create(await env.upload([chat_line(i) for i in range(21)]))).id)
        elapsed = time.monotonic() - started
    assert batch.status == BatchStatus.completed
    assert elapsed >= 0.9  # 20 gaps of 50 ms


async def test_output_files_expire_as_asked(env: BatchesEnv) -> None:
    from llama_batches.api import OutputExpiresAfter

    created = await env.batches.create_batch(
        await env.upload([chat_line(0)]), CHAT, "24h", output_expires_after=OutputExpiresAfter(seconds=3600)
    )
    batch = await env.wait(created.id)
    output: FileObject = await env.files.openai_retrieve_file(batch.output_file_id or "")
    assert output.expires_at is not None and output.expires_at - output.created_at == 3600


async def test_idem_tok_is_an_alias_of_idempotency_key(env: BatchesEnv) -> None:
    from llama_batches.errors import InvalidRequestError
    from llama_batches_reference.batches import ReferenceBatchesImpl as Impl

    assert isinstance(env.batches, Impl)
    file_id = await env.upload([chat_line(0)])
    first = await env.batches.create_batch(file_id, CHAT, "24h", idem_tok="seed-key")
    again = await env.batches.create_batch(file_id, CHAT, "24h", idempotency_key="seed-key", idem_tok="seed-key")
    assert again.id == first.id
    with pytest.raises(InvalidRequestError) as info:
        await env.batches.create_batch(file_id, CHAT, "24h", idempotency_key="a", idem_tok="b")
    assert info.value.param == "idem_tok"


async def test_a_batch_runs_one_model_and_each_other_model_is_a_mismatched_model_line(env: BatchesEnv) -> None:
    lines = [chat_line(0), chat_line(1, model="fake-embed"), chat_line(2), chat_line(3, model="fake-embed")]
    batch = await env.wait((await env.create(await env.upload(lines))).id)
    assert batch.status == BatchStatus.failed
    assert _errors(batch) == [(2, "mismatched_model", "body.model"), (4, "mismatched_model", "body.model")]
    assert batch.errors is not None and batch.errors.data
    assert "'fake-embed' for this request does not match the rest of the batch" in (batch.errors.data[0].message or "")
    assert env.backend.total_requests <= 1  # the model list, not one request
