"""The provider registry: specs, discovery through entry points, lazy import, Protocol-compliance checks.

A provider is a :class:`ProviderSpec` (published through the entry-point group ``llama_batches.providers``) plus a
module with a factory ``async def get_provider_impl(config, deps)``. The spec is light and validated when registered;
the module is imported only when a stack builds that provider, and a missing optional dependency becomes a
:class:`MissingExtraError` that says what to install. Built-in providers use the same group as third-party ones. A
plugin that cannot be registered is skipped with a warning and kept in :attr:`ProviderRegistry.broken`; a config
that uses it fails with :class:`BrokenProviderError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any, cast

from pydantic import BaseModel

from .api import Api, Batches, Files, InferenceProvider, Models
from .errors import MissingExtraError, ProtocolComplianceError, ProviderRegistrationError, UnknownProviderError
from .storage import StorageBackends

__all__ = [
    "API_PROTOCOLS",
    "ENTRY_POINT_GROUP",
    "BrokenPlugin",
    "BrokenProviderError",
    "ProviderDeps",
    "ProviderKind",
    "ProviderRegistry",
    "ProviderSpec",
    "check_compliance",
    "default_registry",
    "instantiate_provider",
    "spec_problems",
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


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point (``entry_point = value`` of ``distribution``) that could not be registered, and why; its
    providers are skipped. ``claims``: the (api, provider_type) pairs it offered, when it got as far as specs."""

    entry_point: str
    value: str
    distribution: str
    reason: str
    claims: tuple[tuple[Api, str], ...] = ()

    @property
    def label(self) -> str:
        return f"'{self.entry_point} = {self.value}' (distribution {self.distribution})"

    def offers(self, api: Api, provider_type: str) -> bool:
        """Whether ``provider_type`` is one of its specs or, when it gave none, named like it or its distribution."""
        if self.claims:
            return (api, provider_type) in self.claims
        return _norm(provider_type.partition("::")[2]) in {_norm(self.entry_point), _norm(self.distribution)}


class BrokenProviderError(ProviderRegistrationError):
    """A config uses a provider whose plugin could not be registered."""

    def __init__(self, plugin: BrokenPlugin, provider_type: str, *, path: str = "") -> None:
        self.plugin, self.provider_type, self.path = plugin, provider_type, path
        super().__init__(
            f"{path + ': ' if path else ''}provider '{provider_type}' is unavailable: its plugin {plugin.label} "
            f"could not be registered: {plugin.reason}"
        )


class ProviderRegistry:
    """Known providers by (api, provider_type) (read-only view: :attr:`specs`); skipped plugins in :attr:`broken`."""

    def __init__(self) -> None:
        self._specs: dict[tuple[Api, str], ProviderSpec] = {}
        self._aliases: dict[tuple[Api, str], str] = {}
        self._origins: dict[tuple[Api, str], str] = {}
        self._broken: list[BrokenPlugin] = []
        self.specs: Mapping[tuple[Api, str], ProviderSpec] = MappingProxyType(self._specs)

    @property
    def broken(self) -> tuple[BrokenPlugin, ...]:
        return tuple(self._broken)

    def register(self, spec: ProviderSpec, *, replace: bool = False, origin: str = "") -> None:
        """Validate and add ``spec``; an invalid spec or a clash with another provider or alias raises
        :class:`ProviderRegistrationError` (a clash unless ``replace``). ``origin`` names where it came from."""
        problems = spec_problems(spec) or self._clashes(spec, replace=replace)
        if problems:
            raise ProviderRegistrationError(f"provider '{_type_of(spec)}': " + "; ".join(problems))
        key = (spec.api, spec.provider_type)
        for alias_key in [k for k, target in self._aliases.items() if k[0] == spec.api and target == key[1]]:
            del self._aliases[alias_key]
        self._specs[key] = spec
        self._origins[key] = origin
        for alias in spec.aliases:
            self._aliases[(spec.api, alias)] = spec.provider_type

    def _clashes(self, spec: ProviderSpec, *, replace: bool) -> list[str]:
        key = (spec.api, spec.provider_type)
        existing = self._specs.get(key)
        problems: list[str] = []
        if existing is not None and existing != spec and not replace:
            where = f"module {existing.module}" + (f" from {self._origins[key]}" if self._origins.get(key) else "")
            problems.append(f"{spec.api.value} provider '{spec.provider_type}' is already registered by {where}")
        if key in self._aliases:
            problems.append(f"'{spec.provider_type}' is already an alias of '{self._aliases[key]}'")
        for alias in spec.aliases:
            target = self._aliases.get((spec.api, alias), spec.provider_type)
            if (spec.api, alias) in self._specs or target != spec.provider_type:
                problems.append(f"alias '{alias}' is already taken by '{self.resolve(spec.api, alias)}'")
        return problems

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> int:
        """Register the specs every installed distribution publishes in ``group``; returns how many. A plugin that
        cannot be loaded, gives no specs, an invalid spec or a clash is skipped whole, logged and kept in broken."""
        count = 0  # built-in providers first: a plugin cannot take their names, whatever the order of sys.path
        seen: set[tuple[str, str]] = set()
        for ep in sorted(entry_points(group=group), key=lambda e: (_norm(_distribution(e)) != "llama-batches", e.name)):
            if (ep.name, ep.value) in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            count += self._load_plugin(ep)
        return count

    def _load_plugin(self, ep: EntryPoint) -> int:
        origin = f"entry point '{ep.name} = {ep.value}' of distribution {_distribution(ep)}"
        try:
            items = _load_entry_point(ep)
        except Exception as exc:  # any failure of third-party code at import is that plugin's, not everyone's
            reason = f"cannot be loaded: {type(exc).__name__}: {exc}"
            self._skip(ep, exc.message if isinstance(exc, ProviderRegistrationError) else reason)
            return 0
        claims = _claims(items)
        try:
            bad = [type(item).__name__ for item in items if not isinstance(item, ProviderSpec)]
            if bad:
                raise ProviderRegistrationError(f"must give ProviderSpec objects, got {bad[0]}")
            trial = ProviderRegistry()  # all of a plugin's specs or none of them
            trial._take(self)
            for spec in cast(list[ProviderSpec], items):
                trial.register(spec, origin=origin)
        except ProviderRegistrationError as exc:
            self._skip(ep, exc.message, claims)
            return 0
        self._take(trial)
        return len(items)

    def _take(self, other: ProviderRegistry) -> None:  # other's providers include ours
        self._specs.update(other._specs)
        self._aliases.update(other._aliases)
        self._origins.update(other._origins)

    def _skip(self, ep: EntryPoint, reason: str, claims: tuple[tuple[Api, str], ...] = ()) -> None:
        plugin = BrokenPlugin(ep.name, ep.value, _distribution(ep), reason, claims)
        logger.warning("skipping provider plugin %s: %s", plugin.label, reason)
        self._broken.append(plugin)

    def resolve(self, api: Api, provider_type: str) -> str:
        """The canonical provider_type for ``provider_type`` (which may be an alias)."""
        return self._aliases.get((api, provider_type), provider_type)

    def get(self, api: Api, provider_type: str, *, path: str = "") -> ProviderSpec:
        """The spec of ``provider_type`` for ``api``. One offered by a broken plugin raises
        :class:`BrokenProviderError` (the plugin, its distribution and why); an unknown one lists the known ones."""
        spec = self._specs.get((api, self.resolve(api, provider_type)))
        if spec is not None:
            return spec
        for plugin in self._broken:
            if plugin.offers(api, provider_type):
                raise BrokenProviderError(plugin, provider_type, path=path)
        raise UnknownProviderError(api.value, provider_type, self.known(api), path=path)

    def known(self, api: Api) -> list[str]:
        """Every provider_type (and alias) registered for ``api``, sorted."""
        names = {t for (a, t) in self._specs if a == api} | {t for (a, t) in self._aliases if a == api}
        return sorted(names)


def _distribution(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "(unknown)"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _load_entry_point(ep: EntryPoint) -> list[object]:
    loaded = ep.load()
    if callable(loaded) and not isinstance(loaded, ProviderSpec):
        loaded = loaded()
    if isinstance(loaded, ProviderSpec):
        return [loaded]
    if isinstance(loaded, str | bytes | Mapping) or not isinstance(loaded, Iterable):
        raise ProviderRegistrationError(f"must give a ProviderSpec or a list of them, got {type(loaded).__name__}")
    return list(cast(Iterable[object], loaded))


def _claims(items: list[object]) -> tuple[tuple[Api, str], ...]:
    ok = [s for s in items if isinstance(s, ProviderSpec) and isinstance(s.api, Api) and isinstance(s.aliases, tuple)]
    return tuple((s.api, name) for s in ok for name in (_type_of(s), *s.aliases))


def _type_of(spec: ProviderSpec) -> str:
    return f"{getattr(spec.kind, 'value', spec.kind)}::{spec.name}"


_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_PROVIDER_TYPE = re.compile(r"(inline|remote)::[a-z0-9][a-z0-9._-]*")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def spec_problems(spec: ProviderSpec) -> list[str]:
    """Everything wrong with ``spec`` on its own (without importing its module): an empty list when it is valid."""
    problems: list[str] = []
    if not isinstance(spec.api, Api):
        problems.append(f"api must be an Api, got {spec.api!r}")
    if not isinstance(spec.kind, ProviderKind) or not isinstance(spec.name, str) or not _NAME.fullmatch(spec.name):
        problems.append(f"provider_type '{_type_of(spec)}' is not inline::<name> or remote::<name> ([a-z0-9._-])")
    if not (isinstance(spec.config_class, type) and issubclass(spec.config_class, BaseModel)):
        problems.append(f"config_class must be a pydantic model class, got {spec.config_class!r}")
    problems += _module_problems(spec.module)
    problems += _dependency_problems(spec)
    for alias in spec.aliases if isinstance(spec.aliases, tuple) else [spec.aliases]:
        if not isinstance(alias, str) or not _PROVIDER_TYPE.fullmatch(alias) or alias == _type_of(spec):
            problems.append(f"alias {alias!r} is not another inline::<name> or remote::<name>")
    return problems


def _module_problems(module: object) -> list[str]:
    if not isinstance(module, str) or not _MODULE.fullmatch(module):
        return [f"module must be a dotted module path, got {module!r}"]
    top = module.partition(".")[0]  # found without importing anything
    if module in sys.modules or top in sys.modules or importlib.util.find_spec(top) is not None:
        return []
    return [f"module '{module}' cannot be found: no package '{top}' is installed"]


def _dependency_problems(spec: ProviderSpec) -> list[str]:
    problems: list[str] = []
    required, optional = spec.api_dependencies, spec.optional_api_dependencies
    for field, deps in {"api_dependencies": required, "optional_api_dependencies": optional}.items():
        if not isinstance(deps, tuple) or not all(isinstance(dep, Api) for dep in deps):
            problems.append(f"{field} must be a tuple of Api, got {deps!r}")
        elif spec.api in deps:
            problems.append(f"{field} lists the provider's own API {spec.api.value}")
    if not problems and set(required) & set(optional):
        problems.append("an API is both in api_dependencies and optional_api_dependencies")
    return problems


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
