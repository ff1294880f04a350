"""llama-batches as llama-stack's batches provider (an out-of-tree provider, as ``llama-stack-provider-*`` packages
are): ``pip install 'llama-batches[llama-stack]'`` next to llama-stack, then in its run config::

    providers:
      batches:
      - provider_id: llama-batches
        provider_type: inline::llama-batches
        module: llama_batches_llama_stack
        config:
          kvstore: {backend: kv_default, namespace: llama_batches}

llama-stack imports :mod:`.provider` for the spec and calls :func:`get_provider_impl` with the config and its
dependencies (``dict[Api, impl]``: inference, files, models). The core of llama-batches never imports this
package; only this package imports llama-stack.
"""

from __future__ import annotations

from typing import Any

from .config import LlamaBatchesProviderConfig

__all__ = ["LlamaBatchesProviderConfig", "get_provider_impl"]


async def get_provider_impl(config: LlamaBatchesProviderConfig, deps: dict[Any, Any], policy: Any = None) -> object:
    """The provider for llama-stack: the engine on llama-stack's inference, files and models, its tables in the
    run config's backend named by ``config.kvstore``. The engine itself starts on first use (see :mod:`.impl`)."""
    from .impl import LlamaBatchesForLlamaStack
    from .storage import backends_of_llama_stack, storage_for

    storage = storage_for(config.kvstore.backend, backends_of_llama_stack())
    impl = LlamaBatchesForLlamaStack(config, deps, storage)
    await impl.initialize()
    return impl
