"""``remote::passthrough``: batches and files on any OpenAI-compatible remote, with the idempotency the remote lacks."""

from __future__ import annotations

from llama_batches.api import Api
from llama_batches.registry import ProviderDeps, ProviderKind, ProviderSpec

from .config import PassthroughBatchesConfig, PassthroughFilesConfig

__all__ = ["PROVIDER_SPECS", "get_provider_impl"]

PROVIDER_SPECS = [
    ProviderSpec(
        api=Api.batches,
        kind=ProviderKind.remote,
        name="passthrough",
        config_class=PassthroughBatchesConfig,
        module="llama_batches_passthrough",
        optional_api_dependencies=(Api.files,),
        description=(
            "Batches on a remote OpenAI-compatible Batches API (OpenAI, a hosted provider, another llama-batches "
            "server), forwarded with the openai SDK. Idempotent creation works even when the remote has none: a "
            "local ledger claims each key atomically before the remote create, and a create whose answer was lost "
            "is found again on the remote by a marker in its metadata."
        ),
    ),
    ProviderSpec(
        api=Api.files,
        kind=ProviderKind.remote,
        name="passthrough",
        config_class=PassthroughFilesConfig,
        module="llama_batches_passthrough",
        description=(
            "Files on a remote OpenAI-compatible Files API; uploads and downloads are streamed, never buffered."
        ),
    ),
]


async def get_provider_impl(config: PassthroughBatchesConfig | PassthroughFilesConfig, deps: ProviderDeps) -> object:
    """The batches provider (with its ledger) or the files provider, by the config's type."""
    from .files import PassthroughFiles
    from .remote import Owned

    if isinstance(config, PassthroughBatchesConfig):
        from .batches import LedgerEntry, PassthroughBatches

        ledger = await deps.storage.table(config.ledger, "ledger", LedgerEntry)
        owned = await deps.storage.table(config.ledger, "batches", Owned)
        files = deps.get(Api.files)
        owned_files = files.owned if isinstance(files, PassthroughFiles) else None  # output files become the owner's
        return PassthroughBatches(config, ledger, owned, owned_files)

    return PassthroughFiles(config, await deps.storage.table(config.ownership, "files", Owned))
