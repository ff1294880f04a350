"""llama-stack 0.7.3's ``Batches`` API (request objects in, ``openai.types.Batch`` out) over llama-batches' engine.

When the engine starts: llama-stack builds its providers inside a throwaway event loop (``asyncio.run`` in a thread)
and serves requests on another, so anything started while the provider is built dies with the first loop. Like
llama-stack's own SQL stores, the engine therefore opens its storage and starts its scheduler on first use, on the
loop that serves requests, in a context of its own (so that no request's user or provider data leaks into the
batches it runs). A batch left unfinished by a crash resumes when the first batches request reaches the restarted
server.

Who calls: the principal is llama-stack's authenticated user (``anonymous`` with its auth off); every row the
engine stores is that principal's, and another principal's batch is a 404.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from llama_stack_api import (
    Api,
    CancelBatchRequest,
    CreateBatchRequest,
    ListBatchesRequest,
    ListBatchesResponse,
    RetrieveBatchRequest,
)
from openai.types import Batch

from llama_batches.api import Api as OurApi
from llama_batches.errors import APIError, InvalidRequestError, ServiceUnavailableError
from llama_batches.principal import ANONYMOUS, acting_as
from llama_batches.registry import ProviderDeps
from llama_batches.server.idempotency import resolve_key
from llama_batches.server.routes_batches import BATCH_ID, check_storable, create_strings, known_batch_id
from llama_batches.storage import StorageBackends
from llama_batches_reference import get_provider_impl as start_engine
from llama_batches_reference.batches import ReferenceBatchesImpl

from .config import LlamaBatchesProviderConfig
from .deps import EngineFiles, EngineModels
from .errors import as_llama_stack_error
from .inference import EngineInference

__all__ = ["LlamaBatchesForLlamaStack"]

logger = logging.getLogger(__name__)


def _principal() -> str:
    from llama_stack.core.request_headers import get_authenticated_user

    user = get_authenticated_user()
    return user.principal if user is not None and user.principal else ANONYMOUS


class LlamaBatchesForLlamaStack:
    """The batches provider llama-stack calls: each method acts as the caller, starts the engine if needed, and
    raises llama-stack's error classes."""

    def __init__(self, config: LlamaBatchesProviderConfig, deps: Mapping[Api, Any], storage: StorageBackends) -> None:
        self._config = config
        self._deps = ProviderDeps(
            {
                OurApi.files: EngineFiles(deps[Api.files]),
                OurApi.models: EngineModels(deps[Api.models]),
                OurApi.inference: EngineInference(deps[Api.inference]),
            },
            storage=storage,
        )
        self._engine: ReferenceBatchesImpl | None = None
        self._starting: asyncio.Task[ReferenceBatchesImpl] | None = None

    async def initialize(self) -> None:
        """Nothing to do yet: the engine starts on the loop that serves requests (see the module's docstring)."""

    async def _started(self) -> ReferenceBatchesImpl:
        if self._engine is not None:
            return self._engine
        if self._starting is None:
            loop = asyncio.get_running_loop()
            self._starting = loop.create_task(self._start(), context=contextvars.Context())
        try:
            self._engine = await asyncio.shield(self._starting)
        except Exception as exc:
            self._starting = None  # a later request tries again (the database may be back)
            logger.exception("llama-batches could not start its engine")
            raise ServiceUnavailableError(f"The batches engine could not start: {exc}") from exc
        return self._engine

    async def _start(self) -> ReferenceBatchesImpl:
        engine = await start_engine(self._config, self._deps)
        assert isinstance(engine, ReferenceBatchesImpl)
        logger.info("llama-batches started its engine (execute=%s)", self._config.execute)
        return engine

    @asynccontextmanager
    async def _serving(self, batch_id: str | None = None) -> AsyncIterator[ReferenceBatchesImpl]:
        try:
            with acting_as(_principal()):
                yield await self._started()
        except APIError as exc:
            raise as_llama_stack_error(exc, batch_id=batch_id) from exc

    async def create_batch(self, request: CreateBatchRequest) -> Batch:
        """Create a batch; the same ``idempotency_key`` and parameters give back the same batch, others a 409."""
        async with self._serving() as engine:
            check_storable(create_strings(request))
            key = resolve_key([], request.idempotency_key, None)
            return await engine.create_batch(
                request.input_file_id,
                request.endpoint,
                request.completion_window,
                dict(request.metadata) if request.metadata is not None else None,
                idempotency_key=key,
            )

    async def retrieve_batch(self, request: RetrieveBatchRequest) -> Batch:
        """The caller's batch, or llama-stack's ``BatchNotFoundError``."""
        async with self._serving(request.batch_id) as engine:
            return await engine.retrieve_batch(known_batch_id(request.batch_id))

    async def cancel_batch(self, request: CancelBatchRequest) -> Batch:
        """Cancel the caller's batch (a 409 once it has ended)."""
        async with self._serving(request.batch_id) as engine:
            return await engine.cancel_batch(known_batch_id(request.batch_id))

    async def list_batches(self, request: ListBatchesRequest) -> ListBatchesResponse:
        """The caller's batches, newest first, ``limit`` (1 to 100) at a time after the cursor ``after``."""
        async with self._serving() as engine:
            if request.after is not None and BATCH_ID.fullmatch(request.after) is None:
                return ListBatchesResponse(data=[], has_more=False)
            if not 1 <= request.limit <= 100:
                raise _bad_limit(request.limit)
            page = await engine.list_batches(after=request.after, limit=request.limit)
        return ListBatchesResponse(data=page.data, first_id=page.first_id, last_id=page.last_id, has_more=page.has_more)

    async def shutdown(self) -> None:
        """Stop the runners and release their leases; finished requests are checkpointed."""
        if self._engine is not None:
            await self._engine.shutdown()


def _bad_limit(limit: int) -> APIError:
    return InvalidRequestError(f"Invalid 'limit': {limit}; it must be 1 to 100.", code="invalid_value", param="limit")
