"""The provider's config in a llama-stack run config: the ``inline::reference`` engine's fields, with its store
named like llama-stack's own batches provider (``kvstore: {backend, namespace}``) among ``storage.backends``."""

from __future__ import annotations

from typing import Any

from llama_batches_reference.config import ReferenceBatchesImplConfig

__all__ = ["LlamaBatchesProviderConfig"]


class LlamaBatchesProviderConfig(ReferenceBatchesImplConfig):
    """llama-batches' engine inside llama-stack. ``kvstore`` names a backend of the run config's
    ``storage.backends`` (``kv_sqlite``, ``sql_sqlite``, ``kv_postgres`` or ``sql_postgres``); its namespace names
    llama-batches' tables, which live beside llama-stack's own in that database."""

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "", **_: Any) -> dict[str, Any]:
        """What ``llama stack`` puts in a generated run config."""
        return {"kvstore": {"backend": "kv_default", "namespace": "llama_batches"}}
