"""The core's own Models and Inference implementations: route every call to the provider that runs the model.

Models come from ``registered_resources.models`` and from what each inference provider reports it runs. A model
a provider reports is known as ``<provider_id>/<model>`` and, when no other provider reports the same name, also as
plain ``<model>``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from .api import (
    ChatCompletion,
    Completion,
    CreateEmbeddingResponse,
    Endpoint,
    InferenceProvider,
    ListModelsResponse,
    Model,
    RawResponse,
)
from .config import RegisteredModel
from .errors import ConfigError, LlamaBatchesError, NotFoundError, quoted

__all__ = ["InferenceRouter", "ModelRegistry"]

logger = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 10.0


class ModelRegistry:
    """Implements the Models API over the stack's inference providers."""

    def __init__(
        self,
        providers: Mapping[str, InferenceProvider],
        registered: Sequence[RegisteredModel] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._providers = dict(providers)
        self._clock = clock
        self._registered = {m.identifier: m for m in (self._from_config(r, i) for i, r in enumerate(registered))}
        self._discovered: dict[str, Model] = {}
        self._last_refresh: float | None = None
        self._refresh_lock = asyncio.Lock()

    def _from_config(self, entry: RegisteredModel, index: int) -> Model:
        provider_id = entry.provider_id
        if provider_id is None and len(self._providers) == 1:
            provider_id = next(iter(self._providers))
        path = f"registered_resources.models[{index}].provider_id"
        if provider_id is None:
            raise ConfigError(path, f"model '{entry.model_id}' needs a provider_id (several inference providers)")
        if provider_id not in self._providers:
            known = ", ".join(sorted(self._providers)) or "(none)"
            raise ConfigError(path, f"unknown inference provider '{provider_id}'; configured: {known}")
        return Model(
            identifier=entry.model_id,
            provider_id=provider_id,
            provider_resource_id=entry.provider_model_id or entry.model_id,
            model_type=entry.model_type,
            metadata=entry.metadata,
        )

    async def refresh(self) -> None:
        """Ask every provider which models it runs; a provider that cannot answer is logged and skipped. A refresh
        cut short (cancelled) counts for nothing: the next lookup asks again."""
        started = self._clock()
        found: dict[str, list[Model]] = {}
        for provider_id, provider in self._providers.items():
            try:
                names = await provider.list_provider_models()
            except LlamaBatchesError as exc:
                logger.warning("inference provider '%s' did not list its models: %s", provider_id, exc)
                continue
            for name in names:
                model = Model(identifier=f"{provider_id}/{name}", provider_id=provider_id, provider_resource_id=name)
                found.setdefault(name, []).append(model)
        discovered: dict[str, Model] = {}
        for name, models in found.items():
            for model in models:
                discovered[model.identifier] = model
            if len(models) == 1:
                discovered.setdefault(name, models[0].model_copy(update={"identifier": name}))
        self._discovered = discovered
        self._last_refresh = started

    async def _refresh_if_stale(self) -> None:
        async with self._refresh_lock:  # concurrent lookups wait for the one refresh under way
            if self._last_refresh is None or self._clock() - self._last_refresh >= REFRESH_INTERVAL_S:
                await self.refresh()

    def lookup(self, model_id: str) -> Model | None:
        """The model ``model_id`` if it is already known (no provider is asked)."""
        return self._registered.get(model_id) or self._discovered.get(model_id)

    async def get_model(self, model_id: str) -> Model:
        model = self.lookup(model_id)
        if model is None:
            await self._refresh_if_stale()
            model = self.lookup(model_id)
        if model is None:
            message = f"The model {quoted(model_id)} does not exist."
            raise NotFoundError(message, code="model_not_found", param="model")
        return model

    async def list_models(self) -> list[Model]:
        await self._refresh_if_stale()
        merged = {**self._discovered, **self._registered}
        return sorted(merged.values(), key=lambda m: m.identifier)

    async def openai_list_models(self) -> ListModelsResponse:
        models = [m.to_openai() for m in await self.list_models()]
        return ListModelsResponse.of(models)

    async def route(self, model_id: str) -> tuple[InferenceProvider, Model]:
        """The provider that runs ``model_id``, and the model."""
        model = await self.get_model(model_id)
        return self._providers[model.provider_id], model


class InferenceRouter:
    """Implements the Inference API by sending each call to the provider that runs its model."""

    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

    async def openai_chat_completion(
        self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> ChatCompletion:
        provider, found = await self._models.route(model)
        return await provider.openai_chat_completion(found.provider_resource_id, messages, **params)

    async def openai_completion(self, model: str, prompt: str | list[str], **params: Any) -> Completion:
        provider, found = await self._models.route(model)
        return await provider.openai_completion(found.provider_resource_id, prompt, **params)

    async def openai_embeddings(self, model: str, input: str | list[str], **params: Any) -> CreateEmbeddingResponse:
        provider, found = await self._models.route(model)
        return await provider.openai_embeddings(found.provider_resource_id, input, **params)

    async def raw_request(self, endpoint: Endpoint, model: str, body: bytes) -> RawResponse:
        provider, found = await self._models.route(model)
        if found.provider_resource_id != model:  # the provider knows the model by another name
            parsed = orjson.loads(body)
            parsed["model"] = found.provider_resource_id
            body = orjson.dumps(parsed)
        return await provider.raw_request(endpoint, found.provider_resource_id, body)
