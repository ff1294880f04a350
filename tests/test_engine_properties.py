"""Properties of whole batches, found by hypothesis: a fake backend over real HTTP answers every attempt of every
request as generated (any status, headers, body, a dropped connection), while the store fails as generated (the
nth checkpoint write, a while of them, a status write, a lease renewal). Whatever happens:

- the batch reaches a terminal status;
- a completed batch has ``completed + failed == total`` and every custom_id exactly once across its files, each line
  one JSON object in OpenAI's shape; any other batch has every custom_id at most once;
- the backend sees a request at most ``max_attempts`` times per run of the batch, and there is one run unless the
  store failed.

Each example is one batch on a fresh in-memory store; the backend and the stack (files, models, inference) are
shared by all examples and run on one event loop for the module.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_batches import Stack, build_stack
from llama_batches.api import TERMINAL_BATCH_STATUSES, Batch, BatchStatus
from llama_batches.storage import MemoryDatabase

from .conftest import openai_provider, run_config
from .engine_harness import Workers, engine_config
from .fake_backend import FakeBackend, Scripted
from .faults import Fault, Faults
from .test_untrusted_answers import json_values, texts, usages

MAX_ATTEMPTS = 3
EXAMPLES = int(os.environ.get("LLAMA_BATCHES_PROPERTY_EXAMPLES", "300"))  # thousands: set it to 3000


@dataclass
class Rig:
    """One event loop with the fake backend and a stack on it, for every example of the module."""

    loop: asyncio.AbstractEventLoop
    backend: FakeBackend
    stack: Stack


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    loop = asyncio.new_event_loop()
    backend = FakeBackend()
    loop.run_until_complete(backend.start())
    directory: Path = tmp_path_factory.mktemp("properties")
    manager = build_stack(run_config(directory, openai_provider(backend.base_url, max_retries=0)))
    stack = loop.run_until_complete(manager.__aenter__())
    try:
        yield Rig(loop, backend, stack)
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.run_until_complete(backend.stop())
        loop.close()


# what a backend can answer ----------------------------------------------------------------------------------------


def _chat(content: Any, usage: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message}],
        "usage": usage,
    }


def _dumped(value: Any, pretty: bool) -> bytes:
    """JSON as a backend may send it: pretty or compact, big integers, raw separators and lone surrogates
    (which make the bytes invalid UTF-8) in strings."""
    return json.dumps(value, indent=2 if pretty else None, ensure_ascii=False).encode("utf-8", "surrogatepass")


good = st.builds(lambda c, p: Scripted(body=_dumped(_chat(c, {"prompt_tokens": 3}), p)), texts, st.booleans())
odd_usage = st.builds(lambda c, u: Scripted(body=_dumped(_chat(c, u), False)), texts, usages)
not_an_object = st.builds(lambda v: Scripted(body=_dumped([v], False)), json_values) | st.builds(
    lambda b: Scripted(body=b, content_type="text/plain"), st.binary(max_size=64)
)
failures = st.builds(
    lambda status, body, after: Scripted(status=status, body=body, headers={"retry-after": after}),
    st.sampled_from([400, 401, 404, 408, 409, 422, 429, 500, 502, 503, 504]) | st.integers(201, 599),
    st.sampled_from([b"", b"oops", b'{"error": {"message": "no"}}']) | st.binary(max_size=32),
    st.sampled_from(["0", "0.001", "-1", "soon", "1e309", "NaN"]),
)
dropped = st.just(Scripted(drop=True))
answers = st.one_of(good, good, odd_usage, not_an_object, failures, dropped)

# what a store can do ----------------------------------------------------------------------------------------------

nth_calls = st.sets(st.integers(1, 6), min_size=1, max_size=3)
store_faults = st.one_of(
    st.none(),
    st.builds(lambda calls: Faults(record=Fault(calls=calls)), nth_calls),
    st.builds(lambda a, n: Faults(record=Fault(between=(a, a + n))), st.integers(1, 4), st.integers(1, 30)),
)
table_faults = st.none() | st.builds(lambda calls: Faults(update=Fault(calls=calls)), nth_calls)
lease_faults = st.none() | st.builds(lambda n: Faults(renew=Fault(calls={n})), st.integers(1, 3))


@dataclass
class Plan:
    answers: list[list[Scripted]]
    log_faults: Faults | None
    table_faults: Faults | None
    lease_faults: Faults | None

    @property
    def store_fails(self) -> bool:
        return any(f is not None for f in (self.log_faults, self.table_faults, self.lease_faults))


plans = st.builds(
    Plan,
    st.lists(st.lists(answers, min_size=1, max_size=MAX_ATTEMPTS), min_size=1, max_size=8),
    store_faults,
    table_faults,
    lease_faults,
)
_examples = itertools.count()


def _script(tag: str, plan: Plan) -> Any:
    def answer(path: str, body: Any, attempt: int) -> Scripted | None:
        content = body["messages"][-1]["content"] if isinstance(body, dict) else None
        if not isinstance(content, str) or not content.startswith(tag):
            return None
        attempts = plan.answers[int(content.removeprefix(tag))]
        return attempts[min(attempt, len(attempts)) - 1]

    return answer


Files = tuple[list[dict[str, Any]], list[dict[str, Any]]]


async def _run(rig: Rig, plan: Plan) -> tuple[Batch, Files, dict[str, int], int]:
    tag = f"p{next(_examples)}-"
    rig.backend.script = _script(tag, plan)
    lines = [
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "fake-model", "messages": [{"role": "user", "content": f"{tag}{i}"}]}}
        for i in range(len(plan.answers))
    ]  # fmt: skip
    config = engine_config(max_attempts=MAX_ATTEMPTS, store_retry_timeout_s=0.05, max_concurrent_requests_per_batch=3)
    async with Workers.start(rig.stack, MemoryDatabase(), config) as workers:
        worker = await workers.add(
            log_faults=plan.log_faults, table_faults=plan.table_faults, lease_faults=plan.lease_faults
        )
        batch = await workers.create(lines)
        done = await workers.wait(batch.id, timeout=30)
        results = await workers.files(done)
        lease = await worker.leases.current(batch.id)
    seen = {key.removeprefix(tag): count for key, count in rig.backend.seen.items() if key.startswith(tag)}
    return done, results, seen, lease.epoch if lease is not None else 0


def _check(plan: Plan, done: Batch, files: Files, seen: dict[str, int], runs: int) -> None:
    total = len(plan.answers)
    output, errors = files
    assert done.status in TERMINAL_BATCH_STATUSES
    per_id = Counter(line["custom_id"] for line in output + errors)
    assert set(per_id.values()) <= {1} and set(per_id) <= {f"req-{i}" for i in range(total)}
    assert all(line["error"] is None and 200 <= line["response"]["status_code"] < 300 for line in output)
    assert all(set(line) == {"id", "custom_id", "response", "error"} for line in output + errors)
    if done.status == BatchStatus.completed:
        counts = done.request_counts
        assert counts is not None and counts.completed + counts.failed == counts.total == total
        assert (len(output), len(errors)) == (counts.completed, counts.failed)
    else:
        assert plan.store_fails, f"a batch ended {done.status} with a store that never failed: {done.errors}"
    assert runs >= 1
    if not plan.store_fails:
        assert runs == 1
    assert all(count <= MAX_ATTEMPTS * runs for count in seen.values()), (seen, runs)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(plan=plans)
def test_every_batch_ends_with_each_request_once_whatever_the_backend_and_store_do(rig: Rig, plan: Plan) -> None:
    done, files, seen, runs = rig.loop.run_until_complete(_run(rig, plan))
    _check(plan, done, files, seen, runs)
