"""inline::llama-cpp: the Inference conformance suite on the bundled SmolLM2 model, and the acceptance test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import pytest_asyncio

pytest.importorskip("llama_cpp", reason="the model tests need the `local` extra: pip install -e '.[local]'")

from llama_batches import build_stack
from llama_batches.api import Endpoint
from llama_batches.errors import NotFoundError
from llama_batches_llama_cpp.config import DEFAULT_MODEL_ID, LlamaCppConfig
from llama_batches_llama_cpp.inference import LlamaCppInference

from .conftest import llama_cpp_provider, run_config

# One event loop for the module, so that the model (loaded by a module-scoped fixture) is loaded once.
pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smollm2() -> AsyncIterator[LlamaCppInference]:
    """The provider on the default model, loaded once for the module."""
    impl = LlamaCppInference(LlamaCppConfig(n_ctx=512))
    await impl.initialize()
    yield impl
    await impl.shutdown()


async def test_typed_call_for_an_unknown_model_is_not_found(smollm2: LlamaCppInference) -> None:
    with pytest.raises(NotFoundError) as error:
        await smollm2.openai_chat_completion("gpt-4o", [{"role": "user", "content": "hi"}], max_tokens=4)
    assert (error.value.code, error.value.param) == ("model_not_found", "model")


async def test_raw_request_with_a_body_that_is_not_json_answers_400(smollm2: LlamaCppInference) -> None:
    answer = await smollm2.raw_request(Endpoint.chat_completions, DEFAULT_MODEL_ID, b"{not json")
    assert answer.status_code == 400
    assert b"invalid_request_error" in answer.body


async def test_the_same_greedy_request_gives_the_same_answer(smollm2: LlamaCppInference) -> None:
    """A regression test: llama.cpp's reuse of the previous prompt's KV cache used to change greedy answers."""
    messages = [{"role": "user", "content": "Name a colour."}]
    first = await smollm2.openai_chat_completion(DEFAULT_MODEL_ID, messages, max_tokens=8, temperature=0)
    second = await smollm2.openai_chat_completion(DEFAULT_MODEL_ID, messages, max_tokens=8, temperature=0)
    assert first.choices[0].message.content == second.choices[0].message.content


async def test_acceptance_the_default_model_knows_the_capital_of_france(tmp_path: Path) -> None:
    """THE acceptance test: a chat completion through build_stack on inline::llama-cpp mentions Paris."""
    config = run_config(tmp_path, llama_cpp_provider(provider_id="local"))
    async with build_stack(config) as stack:
        answer = await stack.inference.openai_chat_completion(
            DEFAULT_MODEL_ID,
            [{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=32,
        )
    content = answer.choices[0].message.content
    assert content is not None and "paris" in content.lower(), content


async def test_raw_request_with_a_message_without_role_answers_openai_s_400(smollm2: LlamaCppInference) -> None:
    """OpenAI refuses such a message; llama.cpp's chat template would crash on it (an internal error, not the
    client's 400)."""
    body = b'{"model": "x", "messages": [{"content": "hi"}], "max_tokens": 2}'
    answer = await smollm2.raw_request(Endpoint.chat_completions, DEFAULT_MODEL_ID, body)
    error = orjson.loads(answer.body)["error"]
    assert answer.status_code == 400
    assert (error["code"], error["param"]) == ("missing_required_parameter", "messages[0].role")
    odd = b'{"model": "x", "messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 2}'
    answer = await smollm2.raw_request(Endpoint.chat_completions, DEFAULT_MODEL_ID, odd)
    assert answer.status_code == 400 and orjson.loads(answer.body)["error"]["param"] == "messages[0].role"
