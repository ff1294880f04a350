"""llama-stack's inference router as the engine's raw path (:meth:`llama_batches.api.Inference.raw_request`).

A request line's body becomes llama-stack's request object for its endpoint, exactly as llama-stack's own
``/v1/chat/completions`` route would build it, and the answer is serialised as that route would send it. What the
router or its provider raise becomes an HTTP answer with OpenAI's error body, so the engine writes the line to the
error file with its status; a backend that cannot be reached is our ``ServiceUnavailableError`` (retried), one that
times out our ``UpstreamTimeoutError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from llama_stack_api import (
    OpenAIChatCompletionRequestWithExtraBody,
    OpenAICompletionRequestWithExtraBody,
    OpenAIEmbeddingsRequestWithExtraBody,
)
from openai import APIConnectionError, APIStatusError, APITimeoutError
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from llama_batches.api import Endpoint, RawResponse
from llama_batches.errors import APIError, ServiceUnavailableError, UpstreamTimeoutError, error_for_status, quoted

from .deps import as_owner
from .errors import from_llama_stack

__all__ = ["EngineInference"]

_REQUESTS: dict[Endpoint, type[BaseModel]] = {
    Endpoint.chat_completions: OpenAIChatCompletionRequestWithExtraBody,
    Endpoint.completions: OpenAICompletionRequestWithExtraBody,
    Endpoint.embeddings: OpenAIEmbeddingsRequestWithExtraBody,
}
_METHODS = {
    Endpoint.chat_completions: "openai_chat_completion",
    Endpoint.completions: "openai_completion",
    Endpoint.embeddings: "openai_embeddings",
}
_JSON = {"content-type": "application/json"}


def _error(status: int, message: str, *, code: str | None = None, param: str | None = None) -> RawResponse:
    error_type = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return RawResponse(status, orjson.dumps(body), _JSON)


def _invalid(error: ValidationError) -> RawResponse:
    first = error.errors()[0] if error.errors() else {"loc": (), "msg": str(error)}
    param = ".".join(str(part) for part in first.get("loc", ()))
    return _error(400, f"Invalid {quoted(param or 'body')}: {first.get('msg')}", code="invalid_value", param=param)


def _answer(result: Any) -> RawResponse:
    if not isinstance(result, BaseModel):
        return _error(500, "The inference provider streamed an answer to a request without stream.")
    return RawResponse(200, orjson.dumps(result.model_dump(mode="json")), _JSON)


class EngineInference:
    """The raw inference path over llama-stack's ``Inference`` (its router, which picks the model's provider)."""

    def __init__(self, inference: Any) -> None:
        self._inference = inference

    async def raw_request(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        """Run ``body`` on ``endpoint`` through llama-stack; its answer, or its error with the right status."""
        try:
            request = _REQUESTS[endpoint].model_validate_json(body)
        except ValidationError as exc:
            return _invalid(exc)
        try:
            with as_owner():
                result = await getattr(self._inference, _METHODS[endpoint])(request)
        except APITimeoutError as exc:
            raise UpstreamTimeoutError(f"The inference backend did not answer in time: {exc}") from exc
        except APIConnectionError as exc:
            raise ServiceUnavailableError(f"The inference backend could not be reached: {exc}") from exc
        except APIStatusError as exc:  # the backend's own answer, passed on as it came
            return _passed_on(exc)
        except ValidationError as exc:
            return _invalid(exc)
        except Exception as exc:
            mapped = from_llama_stack(exc)
            if mapped is None:
                raise
            return _of(mapped)
        return _answer(result)

    async def openai_chat_completion(
        self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> ChatCompletion:
        """A chat completion through the raw path."""
        body = await self._typed(Endpoint.chat_completions, {"model": model, "messages": list(messages), **params})
        return ChatCompletion.model_validate_json(body)

    async def openai_completion(self, model: str, prompt: str | list[str], **params: Any) -> Completion:
        """A completion through the raw path."""
        body = await self._typed(Endpoint.completions, {"model": model, "prompt": prompt, **params})
        return Completion.model_validate_json(body)

    async def openai_embeddings(self, model: str, input: str | list[str], **params: Any) -> CreateEmbeddingResponse:
        """Embeddings through the raw path."""
        body = await self._typed(Endpoint.embeddings, {"model": model, "input": input, **params})
        return CreateEmbeddingResponse.model_validate_json(body)

    async def _typed(self, endpoint: Endpoint, request: dict[str, Any]) -> bytes:
        answer = await self.raw_request(endpoint, str(request["model"]), orjson.dumps(request))
        if not answer.ok:
            error = orjson.loads(answer.body).get("error") or {}
            raise _raised(answer.status_code, str(error.get("message")), error.get("code"), error.get("param"))
        return answer.body


_KEPT_HEADERS = ("retry-after", "retry-after-ms", "x-request-id")


def _passed_on(error: APIStatusError) -> RawResponse:
    headers = {name: error.response.headers[name] for name in _KEPT_HEADERS if name in error.response.headers}
    return RawResponse(error.status_code, error.response.content, {**_JSON, **headers})


def _of(error: APIError) -> RawResponse:
    return _error(error.status, error.message, code=error.code, param=error.param)


def _raised(status: int, message: str, code: Any, param: Any) -> APIError:
    return error_for_status(status, message, code=code, param=param)
