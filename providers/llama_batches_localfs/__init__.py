"""``inline::localfs``: the Files API on a local directory, streamed both ways, metadata in the store."""

from __future__ import annotations

from llama_batches.api import Api
from llama_batches.registry import ProviderDeps, ProviderKind, ProviderSpec

from .config import LocalfsFilesImplConfig

__all__ = ["PROVIDER_SPECS", "LocalfsFilesImplConfig", "get_provider_impl"]

PROVIDER_SPECS = [
    ProviderSpec(
        api=Api.files,
        kind=ProviderKind.inline,
        name="localfs",
        config_class=LocalfsFilesImplConfig,
        module="llama_batches_localfs",
        description=(
            "Files on a local directory (or a directory shared by several machines), streamed to and from "
            "disk, with their metadata in a SQL store. Batch input and output files live here."
        ),
    )
]


async def get_provider_impl(config: LocalfsFilesImplConfig, deps: ProviderDeps) -> object:
    """Open the metadata table and return the provider."""
    from llama_batches.api import FileObject

    from .files import LocalfsFilesImpl

    table = await deps.storage.table(config.metadata_store, "", FileObject)
    impl = LocalfsFilesImpl(config, table)
    await impl.initialize()
    return impl
