"""Send one request to inference: retries with exponential backoff and jitter on 408/429/5xx and connection
errors (honouring ``Retry-After``), an optional requests-per-minute limit, and the result as an output line.

One request's failure is one error line: whatever inference raises or answers, and whatever goes wrong in our own
code on the way, ``execute`` returns that request's line and only ever raises ``asyncio.CancelledError``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import orjson
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from llama_batches.api import Endpoint, Inference, RawResponse
from llama_batches.errors import APIError, RateLimitedError, ServiceUnavailableError, UpstreamTimeoutError, bounded
from llama_batches.storage import RequestResult

from .config import ReferenceBatchesImplConfig, ResponseBody
from .output import error_result, response_result
from .validation import ParsedLine

__all__ = ["RequestExecutor"]

RETRY_STATUSES = frozenset({408, 429})


class _Retryable(Exception):
    """An attempt that may succeed if tried again."""

    def __init__(self, response: RawResponse | None = None, error: APIError | None = None) -> None:
        super().__init__(response.status_code if response is not None else error)
        self.response = response
        self.error = error
        self.retry_after = _retry_after(response) if response is not None else getattr(error, "retry_after", None)


def _retry_after(response: RawResponse) -> float | None:
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def _retryable_status(status: int) -> bool:
    return status in RETRY_STATUSES or status >= 500


class RequestExecutor:
    """Runs requests against inference for every batch of one engine."""

    def __init__(
        self,
        inference: Inference,
        config: ReferenceBatchesImplConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._inference = inference
        self._config = config
        self._as_string = config.response_body is ResponseBody.json_string
        rpm = config.requests_per_minute
        self._limiter = AsyncLimiter(1, 60 / rpm) if rpm else None  # evenly spaced, no burst
        self._backoff = wait_random_exponential(multiplier=config.retry_initial_delay_s, max=config.retry_max_delay_s)
        self._sleep = sleep

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return min(error.retry_after, self._config.retry_max_delay_s)
        return float(self._backoff(state))

    async def _attempt(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        if self._limiter is not None:
            await self._limiter.acquire()
        try:
            response = await self._inference.raw_request(endpoint, model, body)
        except (ServiceUnavailableError, UpstreamTimeoutError, RateLimitedError) as exc:
            raise _Retryable(error=exc) from exc
        if _retryable_status(response.status_code):
            raise _Retryable(response=response)
        return response

    async def execute(self, batch_id: str, endpoint: Endpoint, line: ParsedLine) -> RequestResult:
        """Run ``line`` until it succeeds, fails for good, or runs out of attempts. Never raises but for
        cancellation: any other exception, expected or not, becomes this request's error line (``internal_error``
        with the exception's type and a short message when it is not one of our API errors)."""
        try:
            try:
                body = orjson.dumps(line.body)
                try:  # the first attempt outside tenacity: most requests need no retry, and it costs 18 us a call
                    response = await self._attempt(endpoint, line.model, body)
                except _Retryable as first:
                    response = await self._retry(first, endpoint, line.model, body)
            except (_Retryable, APIError) as exc:
                return _failed(batch_id, line, exc, self._as_string)
            return response_result(batch_id, line.number, line.custom_id, response, body_as_string=self._as_string)
        except Exception as exc:  # a bug, or a provider's surprise, must not take the batch down with it
            return _internal_error(batch_id, line, exc)

    async def _retry(self, first: _Retryable, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        """Attempts 2..max_attempts, the first delay chosen from the first attempt's failure."""
        if self._config.max_attempts <= 1:
            raise first
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._config.max_attempts - 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
            sleep=self._sleep,
        )
        await self._sleep(self._first_delay(first))
        response: RawResponse = await retrying(self._attempt, endpoint, model, body)
        return response

    def _first_delay(self, first: _Retryable) -> float:
        if first.retry_after is not None:
            return min(first.retry_after, self._config.retry_max_delay_s)
        return random.uniform(0, min(self._config.retry_initial_delay_s, self._config.retry_max_delay_s))


def _code(error: APIError) -> str:
    return error.code or error.error_type


def _failed(batch_id: str, line: ParsedLine, exc: _Retryable | APIError, as_string: bool) -> RequestResult:
    """The line of a request that failed for good: the last answer when there was one, else the error."""
    if isinstance(exc, _Retryable):
        if exc.response is not None:
            return response_result(batch_id, line.number, line.custom_id, exc.response, body_as_string=as_string)
        exc = exc.error or ServiceUnavailableError()
    return error_result(batch_id, line.number, line.custom_id, _code(exc), exc.message)


def _internal_error(batch_id: str, line: ParsedLine, exc: Exception) -> RequestResult:
    """The error line of a request that failed on an unexpected exception: its type and a short message (no
    traceback: the line is the caller's, the bug is ours)."""
    try:
        text = str(exc)
    except Exception:  # a broken __str__ is one more surprise, not a reason to raise
        text = ""
    kind = type(exc).__name__
    message = f"The batch engine failed on this request: {kind}: {bounded(text, 200)}" if text else kind
    try:
        return error_result(batch_id, line.number, line.custom_id, "internal_error", message)
    except Exception:
        return error_result(batch_id, line.number, "", "internal_error", kind)
