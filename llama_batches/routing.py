"""The core's own Models and Inference implementations: route every call to the provider that runs the model.

Models come from ``registered_resources.models`` and from what each inference provider reports it runs. A model
a provider reports is known as ``<provider_id>/<model>`` and, when no other provider reports the same name, also as
plain ``<model>``.

A registered model follows llama-stack: ``provider_id: all`` is the first inference provider the stack runs, and
``provider_model_id: auto`` the first model its provider lists (resolved once, when the providers are first asked,
and asked again until the provider answers). A model whose provider the stack skips is skipped with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    ModelType,
    RawResponse,
)
from .config import ALL_PROVIDERS, AUTO_MODEL, RegisteredModel, RunConfig
from .errors import ConfigError, LlamaBatchesError, NotFoundError, quoted

__all__ = ["InferenceRouter", "ModelRegistry", "PlannedModel", "SkippedProvider", "plan_models"]

logger = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 10.0


@dataclass(frozen=True)
class SkippedProvider:
    """A provider of the run config that the stack does not create, and why."""

    api: str
    path: str
    provider_type: str
    reason: str


@dataclass(frozen=True)
class PlannedModel:
    """A model of ``registered_resources.models`` the stack serves; ``model.provider_id`` is resolved."""

    path: str
    model: RegisteredModel

    @property
    def provider_id(self) -> str:
        """The inference provider that runs the model."""
        return self.model.provider_id or ""

    @property
    def auto(self) -> bool:
        """Whether the provider's model is ``auto``: the first model the provider lists."""
        return self.model.provider_model_id == AUTO_MODEL

    def to_model(self, provider_model_id: str | None = None) -> Model:
        """The model, known to its provider as ``provider_model_id`` (default: as configured)."""
        entry = self.model
        return Model(
            identifier=entry.model_id,
            provider_id=self.provider_id,
            provider_resource_id=provider_model_id or entry.provider_model_id or entry.model_id,
            model_type=entry.model_type,
            metadata=entry.metadata,
        )


def plan_models(
    config: RunConfig,
    inference: Sequence[str],
    skipped: Mapping[str, SkippedProvider] | None = None,
    others: Mapping[str, str] | None = None,
) -> list[PlannedModel]:
    """The registered models of ``config`` the stack serves, on its ``inference`` providers (ids, in file order).
    A model on a provider in ``skipped`` is left out with a warning; one naming a provider of another API (``others``:
    provider id -> API) or no provider of the config is a ConfigError."""
    planned = []
    for index, entry in enumerate(config.registered_resources.models):
        path = config.location("registered_resources.models", index)
        provider_id = _provider_of(entry, path, inference, skipped or {}, others or {})
        if provider_id is None:
            continue
        if entry.provider_model_id == AUTO_MODEL and entry.model_type is not ModelType.llm:
            logger.warning(
                "skipping %s (model '%s'): provider_model_id 'auto' needs an llm model; llama-batches providers do "
                "not say which of their models are %s models",
                path,
                entry.model_id,
                entry.model_type.value,
            )
            continue
        planned.append(PlannedModel(path, entry.model_copy(update={"provider_id": provider_id})))
    return planned


def _provider_of(
    entry: RegisteredModel,
    path: str,
    inference: Sequence[str],
    skipped: Mapping[str, SkippedProvider],
    others: Mapping[str, str],
) -> str | None:
    """The inference provider that runs ``entry``, or None (logged) when the model is skipped."""
    wanted, where = entry.provider_id, f"{path}.provider_id"
    if wanted in (ALL_PROVIDERS, None) and not inference:
        logger.warning("skipping %s (model '%s'): llama-batches runs no inference provider", path, entry.model_id)
        return None
    if wanted == ALL_PROVIDERS:
        logger.info(
            "%s: model '%s' (provider_id: all) runs on '%s', the first inference provider",
            path,
            entry.model_id,
            inference[0],
        )
        return inference[0]
    if wanted is None:
        if len(inference) > 1:
            listed = ", ".join(inference)
            raise ConfigError(where, f"model '{entry.model_id}' needs a provider_id (inference providers: {listed})")
        return inference[0]
    if wanted in inference:
        return wanted
    if wanted in skipped:
        provider = skipped[wanted]
        logger.warning(
            "skipping %s (model '%s'): its provider '%s' (%s, %s) is skipped: %s",
            path,
            entry.model_id,
            wanted,
            provider.provider_type,
            provider.path,
            provider.reason,
        )
        return None
    if wanted in others:
        raise ConfigError(where, f"'{wanted}' is a {others[wanted]} provider, not an inference provider")
    known = ", ".join(inference) or "(none)"
    raise ConfigError(where, f"unknown inference provider '{wanted}'; configured: {known}")


class ModelRegistry:
    """Implements the Models API over the stack's inference providers."""

    def __init__(
        self,
        providers: Mapping[str, InferenceProvider],
        registered: Sequence[PlannedModel] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._providers = dict(providers)
        self._clock = clock
        for planned in registered:
            if planned.provider_id not in self._providers:
                known = ", ".join(sorted(self._providers)) or "(none)"
                message = f"unknown inference provider '{planned.provider_id}'; configured: {known}"
                raise ConfigError(f"{planned.path}.provider_id", message)
        self._registered = {p.model.model_id: p.to_model() for p in registered if not p.auto}
        self._pending = {p.model.model_id: p for p in registered if p.auto}
        self._unresolved: set[str] = set()  # pending models already warned about
        self._discovered: dict[str, Model] = {}
        self._last_refresh: float | None = None
        self._refresh_lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Ask every provider which models it runs; a provider that cannot answer is logged and skipped. A refresh
        cut short (cancelled) counts for nothing: the next lookup asks again."""
        started = self._clock()
        listed: dict[str, list[str]] = {}
        for provider_id, provider in self._providers.items():
            try:
                listed[provider_id] = await provider.list_provider_models()
            except LlamaBatchesError as exc:
                logger.warning("inference provider '%s' did not list its models: %s", provider_id, exc)
        self._discovered = _discovered(listed)
        self._resolve_auto(listed)
        self._last_refresh = started

    def _resolve_auto(self, listed: Mapping[str, list[str]]) -> None:
        """Give each ``provider_model_id: auto`` model the first model its provider listed, once."""
        for model_id, planned in list(self._pending.items()):
            names = listed.get(planned.provider_id)
            if names is None:  # the provider did not answer: already logged, asked again next time
                continue
            if not names:
                if model_id not in self._unresolved:
                    self._unresolved.add(model_id)
                    logger.warning(
                        "%s: model '%s' (provider_model_id: auto) has no model yet: provider '%s' lists none",
                        planned.path,
                        model_id,
                        planned.provider_id,
                    )
                continue
            del self._pending[model_id]
            self._registered[model_id] = planned.to_model(names[0])
            logger.info(
                "%s: model '%s' (provider_model_id: auto) is '%s' on inference provider '%s'",
                planned.path,
                model_id,
                names[0],
                planned.provider_id,
            )

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


def _discovered(listed: Mapping[str, list[str]]) -> dict[str, Model]:
    """The models providers listed: as ``<provider_id>/<name>``, and as ``<name>`` when only one lists it."""
    found: dict[str, list[Model]] = {}
    for provider_id, names in listed.items():
        for name in names:
            model = Model(identifier=f"{provider_id}/{name}", provider_id=provider_id, provider_resource_id=name)
            found.setdefault(name, []).append(model)
    discovered: dict[str, Model] = {}
    for name, models in found.items():
        for model in models:
            discovered[model.identifier] = model
        if len(models) == 1:
            discovered.setdefault(name, models[0].model_copy(update={"identifier": name}))
    return discovered


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
