"""The run config, in llama-stack's format (version 2), and its ``${env.X}`` substitution.

```yaml
version: 2
apis: [batches, files, inference]
providers:
  inference:
  - {provider_id: local, provider_type: inline::llama-cpp}
storage:
  backends:
    sql_default: {type: sql_sqlite, db_path: ${env.SQLITE_STORE_DIR:=~/.llama/llama-batches}/sql_store.db}
registered_resources: {models: []}
server: {port: 8321}
```

Substitution follows llama-stack: ``${env.X}`` (X must be set), ``${env.X:=default}`` (X, or the default when X is
unset or empty) and ``${env.X:+value}`` (value when X is set, else empty). A substituted value ``""`` becomes
``null``, ``true``/``false`` booleans and digits numbers. A list entry whose ``provider_id`` ends up empty or
``__disabled__`` (or whose resource id, e.g. ``model_id``, ends up empty) is disabled: dropped unexpanded, as
llama-stack does. Every error names its path in the config file (``providers.files[0].config.storage_dir``), with
list indices counted in the file, disabled entries included.

``registered_resources.models`` also takes llama-stack's newer form ``provider_id: all`` (the first inference
provider the stack runs; :data:`ALL_PROVIDERS`) and ``provider_model_id: auto`` (the first model that provider
lists; :data:`AUTO_MODEL`), resolved by :mod:`llama_batches.routing`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from .api.models import ModelType
from .config_auth import AuthConfig
from .config_uploads import UploadsConfig
from .errors import ConfigError
from .storage.config import StorageConfig

__all__ = [
    "ALL_PROVIDERS",
    "AUTO_MODEL",
    "DISABLED_PROVIDER_ID",
    "ProviderEntry",
    "RegisteredModel",
    "RegisteredResources",
    "RunConfig",
    "ServerConfig",
    "format_location",
    "load_config",
    "substitute_env",
    "validation_error",
]

logger = logging.getLogger(__name__)

ALL_PROVIDERS = "all"
"""``provider_id`` of a registered model: the first inference provider the stack runs (llama-stack's alias form)."""
AUTO_MODEL = "auto"
"""``provider_model_id`` of a registered model: the first model its provider lists (llama-stack's alias form)."""
DISABLED_PROVIDER_ID = "__disabled__"
"""A ``provider_id`` that disables its entry, as in llama-stack."""

_ENV_PATTERN = re.compile(r"\$\{env\.([A-Za-z0-9_]+)(?::([=+])([^}]*))?\}")
_RESOURCE_ID_FIELDS = ("model_id", "shield_id", "vector_db_id", "dataset_id", "scoring_fn_id", "benchmark_id")


class ProviderEntry(BaseModel):
    """One entry of ``providers.<api>``."""

    model_config = ConfigDict(extra="ignore")

    provider_id: str
    provider_type: str
    config: dict[str, Any] = Field(default_factory=dict)


class RegisteredModel(BaseModel):
    """A model of ``registered_resources.models``."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model_id: str
    provider_id: str | None = None
    provider_model_id: str | None = None
    model_type: ModelType = ModelType.llm
    metadata: dict[str, Any] = Field(default_factory=dict)


class RegisteredResources(BaseModel):
    """``registered_resources``: models are used, other resources are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    models: list[RegisteredModel] = Field(default_factory=list)


class ServerConfig(BaseModel):
    """``server``: where ``llama-batches serve`` listens, who may call it (``auth``, llama-stack's format) and how
    uploads are read (``uploads``, ours)."""

    model_config = ConfigDict(extra="allow")

    host: str | None = None
    port: int = 8321
    auth: AuthConfig | None = None
    uploads: UploadsConfig = Field(default_factory=UploadsConfig)


class RunConfig(BaseModel):
    """A llama-stack run config. Keys llama-batches does not use are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    version: int = 2
    image_name: str | None = None
    distro_name: str | None = None
    apis: list[str] = Field(default_factory=list)
    providers: dict[str, list[ProviderEntry]] = Field(default_factory=dict)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    registered_resources: RegisteredResources = Field(default_factory=RegisteredResources)
    server: ServerConfig = Field(default_factory=ServerConfig)

    _positions: dict[str, list[int]] = PrivateAttr(default_factory=dict)

    def file_index(self, list_path: str, index: int) -> int:
        """The index in the config file of entry ``index`` of the list at ``list_path`` (``providers.inference``):
        disabled entries, dropped from the list, count in the file."""
        return _file_index(self._positions, list_path, index)

    def location(self, list_path: str, index: int) -> str:
        """Where entry ``index`` of the list at ``list_path`` is in the config file: ``providers.inference[3]`` for
        the 4th entry of the file, whatever disabled entries came before it."""
        return f"{list_path}[{self.file_index(list_path, index)}]"


Positions = Mapping[str, Sequence[int]]
"""For a list whose disabled entries were dropped (by its path in the file), the file index of each kept entry."""


def _file_index(positions: Positions | None, path: str, index: int) -> int:
    kept = positions.get(path) if positions else None
    return kept[index] if kept is not None and 0 <= index < len(kept) else index


def format_location(prefix: str, loc: tuple[int | str, ...], positions: Positions | None = None) -> str:
    """``("providers", "files", 0, "config")`` as ``providers.files[0].config`` (after ``prefix``). With
    ``positions``, list indices are translated to indices in the file."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{_file_index(positions, path, part)}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def validation_error(prefix: str, error: ValidationError, positions: Positions | None = None) -> ConfigError:
    """The first problem of a pydantic ``ValidationError`` as a ConfigError naming its path."""
    first = error.errors()[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
    more = error.error_count() - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return ConfigError(format_location(prefix, loc, positions), first["msg"] + suffix)


_UNION_TAGS = frozenset({"sqlite", "postgres", "memory", "other", "oauth2_token", "custom"})


class _Substituter:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.positions: dict[str, list[int]] = {}

    def value(self, value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {key: self.value(item, format_location(path, (str(key),))) for key, item in value.items()}
        if isinstance(value, list):
            return self.items(value, path)
        if isinstance(value, str):
            return self.string(value, path)
        return value

    def items(self, values: list[Any], path: str) -> list[Any]:
        result, kept = [], []
        for i, item in enumerate(values):
            item_path = f"{path}[{i}]"
            if isinstance(item, dict) and self._disabled(item, item_path):
                continue
            result.append(self.value(item, item_path))
            kept.append(i)
        if len(kept) < len(values):
            self.positions[path] = kept
        return result

    def _disabled(self, item: dict[str, Any], path: str) -> bool:
        """A provider or resource whose id is empty or ``__disabled__`` (``${env.X:+id}`` with X unset) is dropped."""
        for key in ("provider_id", *_RESOURCE_ID_FIELDS):
            if key in item and isinstance(item[key], str):
                resolved = self.string(item[key], f"{path}.{key}")
                if resolved in (None, "", DISABLED_PROVIDER_ID):
                    logger.debug("%s is disabled (%s: %s)", path, key, item[key])
                    return True
        return False

    def string(self, text: str, path: str) -> Any:
        substituted = _ENV_PATTERN.sub(lambda m: self._replace(m, path), text)
        return _convert(substituted) if substituted != text else text

    def _replace(self, match: re.Match[str], path: str) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        current = self.env.get(name)
        if operator == "=":
            value = current if current else argument
        elif operator == "+":
            value = argument if current else ""
        elif not current:
            raise ConfigError(path, f"environment variable {name} is not set (write ${{env.{name}:=default}})")
        else:
            value = current
        return os.path.expanduser(value) if value else ""


def _convert(value: str) -> Any:
    if value == "":
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d+", value):
        return float(value)
    return value


def substitute_env(raw: Any, env: Mapping[str, str] | None = None) -> Any:
    """``raw`` (parsed YAML) with every ``${env.X...}`` replaced; disabled providers are dropped."""
    return _Substituter(os.environ if env is None else env).value(raw, "")


def _read_yaml(path: Path) -> Any:
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the config file: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from exc


def load_config(source: str | Path | Mapping[str, Any], env: Mapping[str, str] | None = None) -> RunConfig:
    """Read a run config from a YAML file or a mapping, substitute ``${env...}`` and validate it."""
    raw: Any = _read_yaml(Path(source)) if isinstance(source, str | Path) else source
    if not isinstance(raw, Mapping):
        raise ConfigError("", "a run config must be a mapping with 'providers' (and usually 'apis', 'storage')")
    substituter = _Substituter(os.environ if env is None else env)
    substituted = substituter.value(dict(raw), "")
    try:
        config = RunConfig.model_validate(substituted)
    except ValidationError as exc:
        raise validation_error("", exc, substituter.positions) from exc
    config._positions = substituter.positions
    return config


def default_config_path() -> Path:
    """``$LLAMA_BATCHES_CONFIG``, else the packaged embedded default config."""
    configured = os.environ.get("LLAMA_BATCHES_CONFIG")
    if configured:
        return Path(configured)
    return Path(str(resources.files("llama_batches") / "default-run.yaml"))
