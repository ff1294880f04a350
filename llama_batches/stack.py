"""Build a stack from a run config: plan, resolve dependencies, create providers, shut them down.

```python
async with build_stack("run.yaml") as stack:
    file = await stack.files.openai_upload_file(chunks, FilePurpose.batch, "in.jsonl")
```

``build_stack`` validates everything it can without side effects (config, provider types, provider configs,
dependencies); entering the context creates the providers in dependency order and leaving it shuts them down in
reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from .api import Api, Batches, Files, Inference, InferenceProvider, Models
from .config import ProviderEntry, RunConfig, load_config, validation_error
from .errors import ConfigError, DependencyError, StackError, UnknownProviderError
from .llama_stack_types import LLAMA_STACK_PROVIDER_TYPES
from .principal import acting_as
from .registry import ProviderDeps, ProviderRegistry, ProviderSpec, default_registry, instantiate_provider
from .routing import InferenceRouter, ModelRegistry, PlannedModel, SkippedProvider, plan_models
from .storage import StorageBackends

__all__ = ["PlannedProvider", "Stack", "build_stack", "plan_providers"]

logger = logging.getLogger(__name__)

_SINGLE_PROVIDER_APIS = frozenset({Api.batches, Api.files})
_SERVED = {api.value: api for api in Api if api is not Api.models}


@dataclass(frozen=True)
class PlannedProvider:
    """A provider the stack will create: its config entry, spec and validated config. ``index`` counts in the
    config file (disabled entries included)."""

    api: Api
    index: int
    entry: ProviderEntry
    spec: ProviderSpec
    config: BaseModel

    @property
    def path(self) -> str:
        """Where the provider is in the run config."""
        return f"providers.{self.api.value}[{self.index}]"


def _validated(spec: ProviderSpec, entry: ProviderEntry, path: str) -> BaseModel:
    try:
        return spec.config_class.model_validate(entry.config)
    except ValidationError as exc:
        raise validation_error(f"{path}.config", exc) from exc


class _Planner:
    """Walks ``providers``: what to create, and which providers are skipped (and why)."""

    def __init__(self, config: RunConfig, registry: ProviderRegistry) -> None:
        self.config = config
        self.registry = registry
        self.listed = set(config.apis)
        self.by_api: dict[Api, list[PlannedProvider]] = {}
        self.skipped: dict[str, SkippedProvider] = {}

    def run(self) -> None:
        for name in sorted(self.listed - set(_SERVED)):
            logger.info("skipping API '%s': llama-batches does not implement it", name)
        for name, entries in self.config.providers.items():
            api = _SERVED.get(name)
            if api is None:
                if name not in self.listed:
                    logger.info("skipping providers.%s: llama-batches does not implement that API", name)
                self._skip_all(name, entries, f"llama-batches does not implement the {name} API")
            elif self.listed and name not in self.listed:
                logger.info("skipping providers.%s: the API is not listed in 'apis'", name)
                self._skip_all(name, entries, f"the {name} API is not listed in 'apis'")
            elif planned := self._plan_api(api, entries):
                self.by_api[api] = planned

    def _skip_all(self, api: str, entries: list[ProviderEntry], reason: str) -> None:
        for index, entry in enumerate(entries):
            self._skip(api, index, entry, reason)

    def _skip(self, api: str, index: int, entry: ProviderEntry, reason: str) -> None:
        path = self.config.location(f"providers.{api}", index)
        self.skipped.setdefault(entry.provider_id, SkippedProvider(api, path, entry.provider_type, reason))

    def _plan_api(self, api: Api, entries: list[ProviderEntry]) -> list[PlannedProvider]:
        planned: list[PlannedProvider] = []
        for position, entry in enumerate(entries):
            index = self.config.file_index(f"providers.{api.value}", position)
            path = f"providers.{api.value}[{index}]"
            try:
                spec = self.registry.get(api, entry.provider_type, path=f"{path}.provider_type")
            except UnknownProviderError:
                if entry.provider_type in LLAMA_STACK_PROVIDER_TYPES:
                    logger.info("skipping %s (%s): llama-batches does not implement it", path, entry.provider_type)
                    self._skip(api.value, position, entry, f"llama-batches does not implement {entry.provider_type}")
                    continue
                raise
            if planned and api in _SINGLE_PROVIDER_APIS:
                raise ConfigError(
                    path, f"only one {api.value} provider can be enabled; {planned[0].path} is already enabled"
                )
            planned.append(PlannedProvider(api, index, entry, spec, _validated(spec, entry, path)))
        return planned


def plan_providers(config: RunConfig, registry: ProviderRegistry) -> list[PlannedProvider]:
    """Every provider to create, in dependency order. Raises for unknown types, bad configs, missing
    dependencies and cycles; APIs and llama-stack provider types that llama-batches lacks are skipped."""
    return _plan(config, registry)[0]


def _plan(config: RunConfig, registry: ProviderRegistry) -> tuple[list[PlannedProvider], list[PlannedModel]]:
    planner = _Planner(config, registry)
    planner.run()
    inference = [p.entry.provider_id for p in planner.by_api.get(Api.inference, [])]
    others = {p.entry.provider_id: p.api.value for planned in planner.by_api.values() for p in planned}
    models = plan_models(config, inference, planner.skipped, others)
    order = _dependency_order(planner.by_api)
    return [p for api in order for p in planner.by_api.get(api, [])], models


def _available(by_api: Mapping[Api, list[PlannedProvider]]) -> set[Api]:
    return set(by_api) | ({Api.models} if Api.inference in by_api else set())


def _dependency_order(by_api: Mapping[Api, list[PlannedProvider]]) -> list[Api]:
    available = _available(by_api)
    edges: dict[Api, set[Api]] = {api: set() for api in by_api}
    for api, planned in by_api.items():
        for provider in planned:
            for dep in provider.spec.api_dependencies:
                if dep not in available:
                    raise DependencyError(
                        f"{provider.path} ({provider.spec.provider_type}) needs the {dep.value} API, "
                        f"which no provider in the config serves"
                    )
                edges[api].add(Api.inference if dep is Api.models else dep)
            edges[api].update(
                Api.inference if d is Api.models else d
                for d in provider.spec.optional_api_dependencies
                if d in available
            )
    return _topological(edges)


def _topological(edges: Mapping[Api, set[Api]]) -> list[Api]:
    order: list[Api] = []
    state: dict[Api, str] = {}

    def visit(api: Api, trail: list[Api]) -> None:
        if state.get(api) == "done":
            return
        if state.get(api) == "visiting":
            cycle = [*trail[trail.index(api) :], api]
            raise DependencyError("dependency cycle between APIs: " + " -> ".join(a.value for a in cycle))
        state[api] = "visiting"
        for dep in sorted(edges.get(api, ())):
            visit(dep, [*trail, api])
        state[api] = "done"
        order.append(api)

    for api in sorted(edges):
        visit(api, [])
    return order


class Stack:
    """The providers of a run config, created and wired. Use it as an async context manager. ``plan`` holds the
    providers to create, ``registered_models`` the models of ``registered_resources.models`` it serves (their
    provider resolved; those on skipped providers left out)."""

    def __init__(self, config: RunConfig, registry: ProviderRegistry) -> None:
        self.config = config
        self.registry = registry
        self.plan, self.registered_models = _plan(config, registry)
        self.storage = StorageBackends(config.storage.backends)
        self.impls: dict[Api, object] = {}
        self.providers: dict[str, object] = {}
        self._started: list[object] = []

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Create every provider in dependency order; on failure, shut down those already created."""
        try:
            for planned in self.plan:
                await self._start_provider(planned)
            self._finish_inference()
        except BaseException:
            await self.shutdown()
            raise

    async def _start_provider(self, planned: PlannedProvider) -> None:
        if planned.api is not Api.inference:
            self._finish_inference()
        wanted = (*planned.spec.api_dependencies, *planned.spec.optional_api_dependencies)
        deps = ProviderDeps({api: self.impls[api] for api in wanted if api in self.impls}, storage=self.storage)
        impl = await instantiate_provider(planned.spec, planned.config, deps)
        self._started.append(impl)
        self.providers[planned.entry.provider_id] = impl
        if planned.api is not Api.inference:
            self.impls[planned.api] = impl

    def _finish_inference(self) -> None:
        """Once every inference provider exists, put the model registry and the router in front of them."""
        if Api.inference in self.impls:
            return
        inference = {
            p.entry.provider_id: cast(InferenceProvider, self.providers[p.entry.provider_id])
            for p in self.plan
            if p.api is Api.inference and p.entry.provider_id in self.providers
        }
        if not inference:
            return
        models = ModelRegistry(inference, self.registered_models)
        self.impls[Api.models] = models
        self.impls[Api.inference] = InferenceRouter(models)

    async def shutdown(self) -> None:
        """Shut providers down in reverse creation order, then close storage. Safe to call twice."""
        while self._started:
            impl = self._started.pop()
            close = getattr(impl, "shutdown", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    logger.exception("provider %s failed to shut down", type(impl).__name__)
        self.impls.clear()
        self.providers.clear()
        await self.storage.close()

    def _impl(self, api: Api) -> Any:
        impl = self.impls.get(api)
        if impl is None:
            raise StackError(f"the stack has no {api.value} API: no provider for it in the run config")
        return impl

    @property
    def batches(self) -> Batches:
        """The Batches API."""
        return cast(Batches, self._impl(Api.batches))

    @property
    def files(self) -> Files:
        """The Files API."""
        return cast(Files, self._impl(Api.files))

    @property
    def inference(self) -> Inference:
        """The Inference API (routed by model to the provider that runs it)."""
        return cast(Inference, self._impl(Api.inference))

    @property
    def models(self) -> Models:
        """The Models API."""
        return cast(Models, self._impl(Api.models))

    @asynccontextmanager
    async def as_principal(self, principal: str) -> AsyncIterator[Stack]:
        """Act for ``principal`` inside the block: every row stored or read is scoped to it."""
        with acting_as(principal):
            yield self


def build_stack(
    source: str | Path | Mapping[str, Any] | RunConfig,
    *,
    registry: ProviderRegistry | None = None,
    env: Mapping[str, str] | None = None,
) -> Stack:
    """A stack for the run config ``source`` (a YAML path, a mapping or a RunConfig), validated and ready to
    enter with ``async with``. ``env`` replaces ``os.environ`` for ``${env.X}`` substitution."""
    config = source if isinstance(source, RunConfig) else load_config(source, env)
    return Stack(config, registry or default_registry())
