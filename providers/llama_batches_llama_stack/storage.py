"""llama-batches' storage from the backends of llama-stack's run config (``storage.backends``).

llama-stack registers its backends by name when the stack starts and resolves a provider's ``{backend, namespace}``
reference against them; it has no public accessor, so the two registries (key-value and SQL backends) are read
here, once, when the provider is created. Their configs have the fields llama-batches' own backend configs read
(``db_path``; ``host``, ``port``, ``db``, ``user``, ``password``), so a backend name means the same database to both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_batches.errors import ConfigError
from llama_batches.storage import StorageBackends, StorageConfig

__all__ = ["backends_of_llama_stack", "storage_for"]


def backends_of_llama_stack() -> dict[str, Any]:
    """The backends llama-stack registered (name -> its config object), key-value and SQL ones together."""
    from llama_stack.core.storage.kvstore import kvstore as kv
    from llama_stack.core.storage.sqlstore import sqlstore as sql

    found: dict[str, Any] = {}
    for registry_name in ("_SQLSTORE_BACKENDS", "_KVSTORE_BACKENDS"):
        for module in (kv, sql):
            found.update(getattr(module, registry_name, {}))
    return found


def storage_for(
    backend: str, registered: Mapping[str, Any], *, path: str = "config.kvstore.backend"
) -> StorageBackends:
    """llama-batches' view of the one backend ``backend`` among llama-stack's ``registered`` ones."""
    config = registered.get(backend)
    if config is None:
        known = ", ".join(sorted(registered)) or "(none)"
        raise ConfigError(path, f"unknown storage backend '{backend}'; the run config's storage.backends has: {known}")
    raw = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    raw["type"] = str(raw.get("type", ""))
    parsed = StorageConfig.model_validate({"backends": {backend: raw}})
    return StorageBackends(parsed.backends)
