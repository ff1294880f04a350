"""The provider registry: specs, discovery through entry points, lazy import, Protocol-compliance checks.

A provider is a :class:`ProviderSpec` (published through the entry-point group ``llama_batches.providers``) plus a
module with a factory ``async def get_provider_impl(config, deps)``. The spec is light: the provider's module is
imported only when a stack builds that provider, and a missing optional dependency becomes a
:class:`MissingExtraError` that says what to install. Built-in providers register through the same entry-point
group as third-party ones.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any, cast

from pydantic import BaseModel

from .api import Api, Batches, Files, InferenceProvider, Models
from .errors import (
    MissingExtraError,
    ProtocolComplianceError,
    ProviderRegistrationError,
    UnknownProviderError,
)
from .storage import StorageBackends

__all__ = [
    "API_PROTOCOLS",
    "ENTRY_POINT_GROUP",
    "ProviderDeps",
    "ProviderKind",
    "ProviderRegistry",
    "ProviderSpec",
    "check_compliance",
    "default_registry",
    "instantiate_provider",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "llama_batches.providers"

API_PROTOCOLS: Mapping[Api, type] = MappingProxyType(
    {Api.batches: Batches, Api.files: Files, Api.inference: InferenceProvider, Api.models: Models}
)


class ProviderKind(StrEnum):
    """Where a provider does its work: in this process, or by calling a remote service."""

    inline = "inline"
    remote = "remote"


@dataclass(frozen=True)
class ProviderSpec:
    """What the registry knows of a provider before importing it.

    :param api: the API the provider implements.
    :param kind: inline or remote; with ``name`` it makes the ``provider_type`` (``inline::localfs``).
    :param name: the provider's name.
    :param config_class: the pydantic model of the provider's ``config`` block.
    :param module: dotted path of the module holding ``async def get_provider_impl(config, deps)``.
    :param api_dependencies: APIs the provider needs, passed to the factory in ``deps``.
    :param optional_api_dependencies: APIs passed in ``deps`` when the stack has them.
    :param extra: the ``llama-batches[extra]`` that installs the provider's optional dependencies.
    :param aliases: other provider_types that name this provider (``remote::vllm`` for ``remote::openai``).
    :param description: one paragraph for the docs.
    """

    api: Api
    kind: ProviderKind
    name: str
    config_class: type[BaseModel]
    module: str
    api_dependencies: tuple[Api, ...] = ()
    optional_api_dependencies: tuple[Api, ...] = ()
    extra: str | None = None
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def provider_type(self) -> str:
        """The name configs use: ``<kind>::<name>``."""
        return f"{self.kind.value}::{self.name}"

    @property
    def install_hint(self) -> str:
        """What to run when the provider's optional dependencies are missing."""
        if self.extra:
            return f"pip install 'llama-batches[{self.extra}]'"
        return f"install the distribution that provides {self.module}"


class ProviderDeps(dict[Api, Any]):
    """The APIs a provider depends on (a ``dict`` keyed by :class:`Api`, as in llama-stack), plus the stack's
    storage backends under ``storage``."""

    def __init__(self, apis: Mapping[Api, Any], storage: StorageBackends | None = None) -> None:
        super().__init__(apis)
        self.storage = storage if storage is not None else StorageBackends({})


ProviderFactory = Callable[[Any, ProviderDeps], Awaitable[object]]


class ProviderRegistry:
    """Known providers by (api, provider_type); a read-only view is in :attr:`specs`."""

    def __init__(self) -> None:
        self._specs: dict[tuple[Api, str], ProviderSpec] = {}
        self._aliases: dict[tuple[Api, str], str] = {}
        self.specs: Mapping[tuple[Api, str], ProviderSpec] = MappingProxyType(self._specs)

    def register(self, spec: ProviderSpec, *, replace: bool = False) -> None:
        """Add ``spec``; a clash with another provider raises unless ``replace``."""
        key = (spec.api, spec.provider_type)
        existing = self._specs.get(key)
        if existing is not None and existing != spec and not replace:
            raise ProviderRegistrationError(
                f"{spec.api} provider '{spec.provider_type}' is already registered by module {existing.module}"
            )
        self._specs[key] = spec
        for alias in spec.aliases:
            self._aliases[(spec.api, alias)] = spec.provider_type

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Register the specs every installed distribution publishes in ``group``; returns how many."""
        count = 0
        seen: set[tuple[str, str]] = set()
        for ep in entry_points(group=group):
            if (ep.name, ep.value) in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            for spec in _specs_from_entry_point(ep):
                self.register(spec)
                count += 1
        return count

    def resolve(self, api: Api, provider_type: str) -> str:
        """The canonical provider_type for ``provider_type`` (which may be an alias)."""
        return self._aliases.get((api, provider_type), provider_type)

    def get(self, api: Api, provider_type: str, *, path: str = "") -> ProviderSpec:
        """The spec of ``provider_type`` for ``api``; an unknown one lists the known ones."""
        spec = self._specs.get((api, self.resolve(api, provider_type)))
        if spec is None:
            raise UnknownProviderError(api.value, provider_type, self.known(api), path=path)
        return spec

    def known(self, api: Api) -> list[str]:
        """Every provider_type (and alias) registered for ``api``, sorted."""
        names = {t for (a, t) in self._specs if a == api} | {t for (a, t) in self._aliases if a == api}
        return sorted(names)


def _specs_from_entry_point(ep: EntryPoint) -> list[ProviderSpec]:
    try:
        loaded = ep.load()
    except ImportError as exc:
        raise ProviderRegistrationError(f"entry point '{ep.name} = {ep.value}' cannot be imported: {exc}") from exc
    if callable(loaded) and not isinstance(loaded, ProviderSpec):
        loaded = loaded()
    items = [loaded] if isinstance(loaded, ProviderSpec) else list(cast(Iterable[object], loaded))
    bad = [item for item in items if not isinstance(item, ProviderSpec)]
    if bad:
        raise ProviderRegistrationError(
            f"entry point '{ep.name} = {ep.value}' must give ProviderSpec objects, got {type(bad[0]).__name__}"
        )
    return cast(list[ProviderSpec], items)


def default_registry() -> ProviderRegistry:
    """A registry holding every provider installed in this environment."""
    registry = ProviderRegistry()
    registry.load_entry_points()
    return registry


def _import_factory(spec: ProviderSpec) -> ProviderFactory:
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise MissingExtraError(spec.provider_type, missing, spec.install_hint) from exc
    factory = getattr(module, "get_provider_impl", None)
    if factory is None or not inspect.iscoroutinefunction(factory):
        raise ProviderRegistrationError(
            f"provider '{spec.provider_type}': module {spec.module} has no async get_provider_impl(config, deps)"
        )
    return cast(ProviderFactory, factory)


async def instantiate_provider(spec: ProviderSpec, config: BaseModel, deps: ProviderDeps) -> object:
    """Import the provider's module, build the provider and check it against its API's Protocol."""
    factory = _import_factory(spec)
    try:
        impl = await factory(config, deps)
    except ImportError as exc:  # heavy imports inside the factory
        raise MissingExtraError(spec.provider_type, exc.name or str(exc), spec.install_hint) from exc
    check_compliance(impl, API_PROTOCOLS[spec.api], provider_type=spec.provider_type, api=spec.api.value)
    return impl


def _protocol_methods(protocol: type) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for klass in reversed(protocol.__mro__):
        if klass is object or not getattr(klass, "_is_protocol", False):
            continue
        for name, member in vars(klass).items():
            if not name.startswith("_") and callable(member):
                methods[name] = member
    return methods


def check_compliance(impl: object, protocol: type, *, provider_type: str, api: str) -> None:
    """Raise :class:`ProtocolComplianceError` listing every method of ``protocol`` that ``impl`` lacks, is not
    async where the Protocol is, or that does not accept the Protocol's parameters."""
    problems: list[str] = []
    for name, proto_method in _protocol_methods(protocol).items():
        method = getattr(impl, name, None)
        if method is None or not callable(method):
            problems.append(f"missing method {name}()")
            continue
        if inspect.iscoroutinefunction(proto_method) and not inspect.iscoroutinefunction(method):
            problems.append(f"{name}() must be async")
            continue
        missing = _missing_parameters(proto_method, method)
        if missing:
            problems.append(f"{name}() lacks parameter(s) {', '.join(missing)}")
    if problems:
        raise ProtocolComplianceError(provider_type, api, problems)


def _missing_parameters(proto_method: Any, method: Any) -> list[str]:
    expected = list(inspect.signature(proto_method).parameters.values())[1:]  # drop self
    actual = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in actual.values()):
        return []
    return [
        p.name
        for p in expected
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) and p.name not in actual
    ]
