"""The Inference conformance suite: what every inference provider must do.

Bind it to a provider by subclassing in a test module and providing three fixtures::

    class TestMyProvider(InferenceConformance):
        @pytest.fixture
        async def inference_provider(self) -> AsyncIterator[InferenceProvider]: ...

        @pytest.fixture
        def model_id(self) -> str: ...  # a chat/completion model the provider runs

        @pytest.fixture
        def embedding_model_id(self) -> str: ...  # a model that embeds (may be model_id)
"""

from __future__ import annotations

from typing import Any

import orjson

from llama_batches.api import ChatCompletion, Completion, CreateEmbeddingResponse, Endpoint, InferenceProvider

__all__ = ["InferenceConformance"]

# Small and greedy: the suite runs on real models too, and must stay fast and repeatable.
GENERATION: dict[str, Any] = {"max_tokens": 12, "temperature": 0}


def _chat_body(model: str, **fields: Any) -> bytes:
    return orjson.dumps({"model": model, **GENERATION, **fields})


def _error_of(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI error body (fails the test when the body has another shape)."""
    parsed = orjson.loads(body)
    assert isinstance(parsed, dict) and isinstance(parsed.get("error"), dict), parsed
    error: dict[str, Any] = parsed["error"]
    assert isinstance(error.get("message"), str) and error["message"], error
    assert isinstance(error.get("type"), str), error
    return error


class InferenceConformance:
    """Abstract: needs the fixtures ``inference_provider``, ``model_id`` and ``embedding_model_id``."""

    async def test_chat_completion_returns_content_and_usage(
        self, inference_provider: InferenceProvider, model_id: str
    ) -> None:
        messages = [{"role": "user", "content": "Say hello."}]
        answer = await inference_provider.openai_chat_completion(model_id, messages, **GENERATION)
        assert isinstance(answer, ChatCompletion)
        assert answer.model == model_id
        assert answer.choices, answer
        content = answer.choices[0].message.content
        assert isinstance(content, str) and content.strip()
        assert answer.usage is not None
        assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    async def test_completion_returns_text(self, inference_provider: InferenceProvider, model_id: str) -> None:
        answer = await inference_provider.openai_completion(model_id, "The sky is", **GENERATION)
        assert isinstance(answer, Completion)
        assert answer.model == model_id
        assert len(answer.choices) == 1
        assert isinstance(answer.choices[0].text, str) and answer.choices[0].text
        assert answer.usage is not None and answer.usage.prompt_tokens > 0

    async def test_embeddings_are_float_vectors_of_one_length(
        self, inference_provider: InferenceProvider, embedding_model_id: str
    ) -> None:
        texts = ["a cat", "the stock market fell sharply today"]
        answer = await inference_provider.openai_embeddings(embedding_model_id, texts)
        assert isinstance(answer, CreateEmbeddingResponse)
        assert [item.index for item in answer.data] == [0, 1]
        vectors = [item.embedding for item in answer.data]
        assert len(vectors[0]) > 0 and len(vectors[0]) == len(vectors[1])
        assert all(isinstance(x, float) for vector in vectors for x in vector)
        assert vectors[0] != vectors[1]

    async def test_raw_chat_answers_200_with_a_json_object(
        self, inference_provider: InferenceProvider, model_id: str
    ) -> None:
        body = _chat_body(model_id, messages=[{"role": "user", "content": "Say hello."}])
        answer = await inference_provider.raw_request(Endpoint.chat_completions, model_id, body)
        assert answer.status_code == 200 and answer.ok, answer.body[:500]
        parsed = orjson.loads(answer.body)
        assert isinstance(parsed, dict)
        assert parsed["object"] == "chat.completion"
        assert isinstance(parsed["choices"][0]["message"]["content"], str)
        assert ChatCompletion.model_validate(parsed).model == model_id

    async def test_raw_request_for_an_unknown_model_answers_404(self, inference_provider: InferenceProvider) -> None:
        model = "no-such-model"
        body = _chat_body(model, messages=[{"role": "user", "content": "Say hello."}])
        answer = await inference_provider.raw_request(Endpoint.chat_completions, model, body)
        assert answer.status_code == 404 and not answer.ok
        assert _error_of(answer.body)["code"] == "model_not_found"

    async def test_raw_chat_without_messages_answers_400(
        self, inference_provider: InferenceProvider, model_id: str
    ) -> None:
        answer = await inference_provider.raw_request(Endpoint.chat_completions, model_id, _chat_body(model_id))
        assert answer.status_code == 400
        error = _error_of(answer.body)
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "messages"

    async def test_provider_lists_its_model(self, inference_provider: InferenceProvider, model_id: str) -> None:
        assert isinstance(inference_provider, InferenceProvider)
        models = await inference_provider.list_provider_models()
        assert model_id in models
        assert all(isinstance(m, str) for m in models)
