"""``remote::openai`` (and ``remote::vllm``, ``remote::ollama``): inference on any OpenAI-compatible server."""

from __future__ import annotations

from llama_batches.api import Api
from llama_batches.registry import ProviderDeps, ProviderKind, ProviderSpec

from .config import OllamaConfig, OpenAICompatConfig, OpenAIConfig, VLLMConfig

__all__ = ["PROVIDER_SPECS", "OpenAICompatConfig", "get_provider_impl"]

_DESCRIPTION = (
    "Inference on {what} through its OpenAI-compatible API. Typed calls go through the openai SDK; the batch "
    "executor's raw path forwards request bodies as bytes and returns the answer unparsed."
)

PROVIDER_SPECS = [
    ProviderSpec(
        api=Api.inference,
        kind=ProviderKind.remote,
        name=name,
        config_class=config_class,
        module="llama_batches_openai",
        description=_DESCRIPTION.format(what=what),
    )
    for name, config_class, what in (
        ("openai", OpenAIConfig, "OpenAI or any OpenAI-compatible server"),
        ("vllm", VLLMConfig, "a vLLM server"),
        ("ollama", OllamaConfig, "an Ollama server"),
    )
]


async def get_provider_impl(config: OpenAICompatConfig, deps: ProviderDeps) -> object:
    """Open a connection pool to the server."""
    from .inference import OpenAICompatInference

    return OpenAICompatInference(config)
