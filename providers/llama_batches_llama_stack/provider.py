"""What llama-stack reads first: ``module: llama_batches_llama_stack`` in a run config makes it import this module
and call :func:`get_provider_spec`."""

from __future__ import annotations

from llama_stack_api import Api, InlineProviderSpec, ProviderSpec

__all__ = ["PROVIDER_TYPE", "get_provider_spec"]

PROVIDER_TYPE = "inline::llama-batches"


def get_provider_spec() -> ProviderSpec:
    """The inline batches provider: llama-batches' engine, on llama-stack's inference, files and models."""
    return InlineProviderSpec(
        api=Api.batches,
        provider_type=PROVIDER_TYPE,
        pip_packages=["llama-batches[llama-stack]"],
        module="llama_batches_llama_stack",
        config_class="llama_batches_llama_stack.config.LlamaBatchesProviderConfig",
        api_dependencies=[Api.inference, Api.files, Api.models],
        description=(
            "llama-batches' batches engine: idempotent creation (same key and parameters give the same batch, "
            "other parameters a 409), streamed validation, a sliding-window executor with retries and rate limits, "
            "per-request checkpoints so that a batch resumes after a crash, and leases so that several servers "
            "share the work on Postgres."
        ),
    )
