"""The remote OpenAI-compatible API: the openai SDK for calls, aiohttp for the two that must stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import openai
from openai import AsyncOpenAI
from pydantic import BaseModel

from llama_batches.errors import (
    APIError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    bounded,
    error_for_status,
)
from llama_batches.upstream import error_from_sdk, upstream_field

from .config import RemoteConfig

__all__ = ["Owned", "Remote"]

T = TypeVar("T")


class Owned(BaseModel):
    """A remote object (batch or file) that a principal created or reached through its batch."""

    id: str
    created_at: int


class Remote:
    """One remote API: an SDK client and, created on first use, an aiohttp session for streaming."""

    def __init__(self, config: RemoteConfig) -> None:
        self.base_url = config.base_url.rstrip("/")
        self.where = f"The remote API at {self.base_url}"
        api_key = config.api_key.get_secret_value() if config.api_key else None
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.sdk = AsyncOpenAI(
            base_url=self.base_url, api_key=api_key or "none", timeout=config.timeout_s, max_retries=config.max_retries
        )
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run an SDK call; its failure as an error of our tree with the remote's status, code and message."""
        try:
            return await call()
        except openai.OpenAIError as exc:
            raise error_from_sdk(exc, self.where) from exc

    def session(self) -> aiohttp.ClientSession:
        """The streaming session (created in the running loop on first use)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=self._timeout)
        return self._session

    async def check(self, response: aiohttp.ClientResponse) -> None:
        """Raise the remote's error for a non-2xx answer."""
        if response.status < 400:
            return
        try:
            body: Any = await response.json(content_type=None)
        except (ValueError, aiohttp.ClientError):
            body = {}
        error = body.get("error", body) if isinstance(body, dict) else {}
        error = error if isinstance(error, dict) else {}
        message = bounded(str(error.get("message") or f"{self.where} answered {response.status}."))
        code, param = upstream_field(error.get("code")), upstream_field(error.get("param"))
        if response.status >= 500:
            raise UpstreamError(f"{self.where} failed: {message}", code=code)
        raise error_for_status(response.status, message, code=code, param=param)

    def transport_error(self, exc: BaseException) -> APIError:
        """A connection failure or timeout of a streaming call."""
        if isinstance(exc, asyncio.TimeoutError):
            return UpstreamTimeoutError(f"{self.where} did not answer in time.")
        return ServiceUnavailableError(f"{self.where} cannot be reached: {bounded(str(exc))}")

    async def close(self) -> None:
        """Close the connection pools."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.sdk.close()
