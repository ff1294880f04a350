"""The executor's retry policy, with an injected sleep and an Inference that answers from a script."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from llama_batches.api import ChatCompletion, Completion, CreateEmbeddingResponse, Endpoint, Inference, RawResponse
from llama_batches.errors import ServiceUnavailableError
from llama_batches_reference.config import ReferenceBatchesImplConfig
from llama_batches_reference.executor import RequestExecutor
from llama_batches_reference.validation import ParsedLine

OK = RawResponse(200, b'{"object": "chat.completion", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}')


class ScriptedInference:
    """An Inference whose raw answers come from a list (an exception in the list is raised)."""

    def __init__(self, answers: Sequence[RawResponse | Exception]) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def raw_request(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        answer = self.answers[self.calls]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def openai_chat_completion(
        self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> ChatCompletion:
        raise AssertionError("the executor uses the raw path")

    async def openai_completion(self, model: str, prompt: str | list[str], **params: Any) -> Completion:
        raise AssertionError("the executor uses the raw path")

    async def openai_embeddings(self, model: str, input: str | list[str], **params: Any) -> CreateEmbeddingResponse:
        raise AssertionError("the executor uses the raw path")


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


LINE = ParsedLine(1, "c-1", "m", {"model": "m", "messages": []})


def executor(
    answers: Sequence[RawResponse | Exception], **config: Any
) -> tuple[RequestExecutor, ScriptedInference, Sleeps]:
    inference, sleeps = ScriptedInference(answers), Sleeps()
    settings = ReferenceBatchesImplConfig.model_validate({"kvstore": {"backend": "b"}, **config})
    scripted: Inference = inference
    return RequestExecutor(scripted, settings, sleep=sleeps), inference, sleeps


async def test_retry_after_is_honoured() -> None:
    run, inference, sleeps = executor(
        [RawResponse(429, b"{}", {"retry-after": "7"}), RawResponse(503, b"{}", {"retry-after-ms": "250"}), OK]
    )
    result = await run.execute("batch_1", Endpoint.chat_completions, LINE)
    assert result.ok and inference.calls == 3
    assert sleeps.delays == [7.0, 0.25]


async def test_backoff_grows_with_jitter_and_is_capped() -> None:
    """Full jitter: each delay is uniform in [0, bound], the bound doubling from the second retry (1, 1, 2, 4, ...)
    up to ``retry_max_delay_s``. Over 200 runs the largest delay of each retry shows the bound: below it, and above
    the previous one, so the growth itself is checked (each of these fails by chance with probability < 2**-60)."""
    per_retry: list[list[float]] = [[] for _ in range(5)]
    for _ in range(200):
        failures: list[RawResponse | Exception] = [RawResponse(500, b"{}")] * 5
        run, _, sleeps = executor([*failures, OK], max_attempts=6, retry_initial_delay_s=1.0, retry_max_delay_s=5.0)
        assert (await run.execute("batch_1", Endpoint.chat_completions, LINE)).ok
        assert len(sleeps.delays) == 5
        for index, delay in enumerate(sleeps.delays):
            per_retry[index].append(delay)
    bounds = [1.0, 1.0, 2.0, 4.0, 5.0]  # 8 capped at 5
    for index, delays in enumerate(per_retry):
        assert all(0 <= d <= bounds[index] for d in delays), (index, max(delays))
        assert len(set(delays)) > 150  # jitter: not one fixed delay
    for index in (2, 3, 4):
        assert max(per_retry[index]) > bounds[index - 1]  # grown past the previous bound


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_client_errors_are_not_retried(status: int) -> None:
    run, inference, sleeps = executor([RawResponse(status, b'{"error": {"message": "no"}}'), OK])
    result = await run.execute("batch_1", Endpoint.chat_completions, LINE)
    assert not result.ok and inference.calls == 1 and sleeps.delays == []
    assert orjson.loads(result.output)["response"]["status_code"] == status


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(status: int) -> None:
    run, inference, _ = executor([RawResponse(status, b"{}"), OK])
    assert (await run.execute("batch_1", Endpoint.chat_completions, LINE)).ok and inference.calls == 2


async def test_attempts_are_bounded_and_the_last_error_is_kept() -> None:
    run, inference, _ = executor([ServiceUnavailableError("down")] * 3, max_attempts=3)
    result = await run.execute("batch_1", Endpoint.chat_completions, LINE)
    assert not result.ok and inference.calls == 3
    assert orjson.loads(result.output)["error"] == {"code": "service_unavailable", "message": "down"}


async def test_one_attempt_means_no_retry() -> None:
    run, inference, sleeps = executor([RawResponse(500, b"{}"), OK], max_attempts=1)
    assert not (await run.execute("batch_1", Endpoint.chat_completions, LINE)).ok
    assert inference.calls == 1 and sleeps.delays == []
