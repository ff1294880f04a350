"""``inline::reference``: the batches engine. Idempotent creation, streamed validation, a durable sliding-window
executor with retries, checkpoints that let a batch resume after a crash, and output written by streaming."""

from __future__ import annotations

from llama_batches.api import Api
from llama_batches.registry import ProviderDeps, ProviderKind, ProviderSpec

from .config import ReferenceBatchesImplConfig

__all__ = ["PROVIDER_SPECS", "ReferenceBatchesImplConfig", "get_provider_impl"]

PROVIDER_SPECS = [
    ProviderSpec(
        api=Api.batches,
        kind=ProviderKind.inline,
        name="reference",
        config_class=ReferenceBatchesImplConfig,
        module="llama_batches_reference",
        api_dependencies=(Api.inference, Api.files, Api.models),
        aliases=("inline::llama-batches",),  # its name inside llama-stack (llama_batches_llama_stack)
        description=(
            "The reference batches engine: idempotent batch creation (same key and parameters give the same "
            "batch, other parameters a 409), input validated by streaming, a sliding-window executor with retries, "
            "rate limits and per-request checkpoints so that a batch resumes after a crash without re-running "
            "finished requests, and output files written by streaming."
        ),
    )
]


async def get_provider_impl(config: ReferenceBatchesImplConfig, deps: ProviderDeps) -> object:
    """Open the engine's tables and resume the batches a previous process left unfinished."""
    from .batches import ReferenceBatchesImpl
    from .records import BatchRecord

    table = await deps.storage.table(config.kvstore, "batches", BatchRecord)
    log = await deps.storage.result_log(config.kvstore, "requests")
    leases = await deps.storage.leases(config.kvstore, "leases")
    impl = ReferenceBatchesImpl(config, table, log, leases, deps[Api.files], deps[Api.models], deps[Api.inference])
    await impl.initialize()
    return impl
