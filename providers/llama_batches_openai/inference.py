"""Inference on an OpenAI-compatible server.

Typed calls go through the openai SDK. The batch executor's raw path posts a body as bytes on an aiohttp
keep-alive pool and hands the answer back unparsed: per request that costs a fraction of the SDK's model
validation and re-serialisation, which is what lets a batch run near the server's own capacity.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import openai
from openai import AsyncOpenAI

from llama_batches.api import ChatCompletion, Completion, CreateEmbeddingResponse, Endpoint, RawResponse
from llama_batches.errors import ServiceUnavailableError, UpstreamError, UpstreamTimeoutError, bounded
from llama_batches.upstream import error_from_sdk

from .config import OpenAICompatConfig

__all__ = ["OpenAICompatInference"]

T = TypeVar("T")

_KEPT_HEADERS = ("retry-after", "retry-after-ms", "x-request-id", "content-type")


class OpenAICompatInference:
    """The Inference API on an OpenAI-compatible server."""

    def __init__(self, config: OpenAICompatConfig) -> None:
        self._config = config
        self._base = config.base_url.rstrip("/")
        api_key = config.api_key.get_secret_value() if config.api_key else None
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._session_lock = asyncio.Lock()
        self._sdk = AsyncOpenAI(
            base_url=self._base,
            api_key=api_key or "none",
            max_retries=config.max_retries,
            timeout=config.timeout_s,
        )

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            async with self._session_lock:
                if self._session is None:
                    self._session = self._new_session()
        return self._session

    def _new_session(self) -> aiohttp.ClientSession:
        verify = self._config.tls_verify
        tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        return aiohttp.ClientSession(
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self._config.timeout_s, connect=self._config.connect_timeout_s),
            connector=aiohttp.TCPConnector(limit=self._config.max_connections, ssl=tls),
        )

    async def shutdown(self) -> None:
        """Close the connection pools."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._sdk.close()

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except openai.OpenAIError as exc:
            raise error_from_sdk(exc, f"The inference server at {self._base}") from exc

    async def openai_chat_completion(
        self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> ChatCompletion:
        create: Any = self._sdk.chat.completions.create
        result: ChatCompletion = await self._call(lambda: create(model=model, messages=list(messages), **params))
        return result

    async def openai_completion(self, model: str, prompt: str | list[str], **params: Any) -> Completion:
        create: Any = self._sdk.completions.create
        result: Completion = await self._call(lambda: create(model=model, prompt=prompt, **params))
        return result

    async def openai_embeddings(self, model: str, input: str | list[str], **params: Any) -> CreateEmbeddingResponse:
        create: Any = self._sdk.embeddings.create
        result: CreateEmbeddingResponse = await self._call(lambda: create(model=model, input=input, **params))
        return result

    async def raw_request(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        """Post ``body`` and return the answer unparsed; an answer body over ``max_response_bytes`` is an
        UpstreamError ``response_too_large`` (its connection is closed, not reused)."""
        url = self._base + endpoint.value.removeprefix("/v1")
        session = await self._http()
        try:
            async with session.post(url, data=body) as response:
                content = await self._read(response)
                headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
                return RawResponse(response.status, content, headers)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"The inference server at {self._base} did not answer in time.") from exc
        except (aiohttp.ClientError, OSError) as exc:
            message = f"The inference server at {self._base} cannot be reached: {bounded(str(exc), 300)}"
            raise ServiceUnavailableError(message) from exc

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, read at once when its declared length is within the cap, else chunk by chunk up to it."""
        cap = self._config.max_response_bytes
        declared = response.content_length
        if declared is not None and declared <= cap:
            return await response.read()  # the parser stops at Content-Length: no more can come
        if declared is not None:
            raise self._too_large(cap)
        chunks, size = [], 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise self._too_large(cap)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, cap: int) -> UpstreamError:
        message = f"The inference server at {self._base} answered with a body over the limit of {cap} bytes."
        return UpstreamError(message, code="response_too_large")

    async def list_provider_models(self) -> list[str]:
        if self._config.allowed_models is not None:
            return list(self._config.allowed_models)
        page = await self._call(self._sdk.models.list)
        return [model.id for model in page.data]
