"""Configuration of the OpenAI-compatible inference providers (``remote::openai``, ``remote::vllm``,
``remote::ollama``), with the field names llama-stack uses for each."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr

__all__ = ["OllamaConfig", "OpenAICompatConfig", "OpenAIConfig", "VLLMConfig"]


class OpenAICompatConfig(BaseModel):
    """Any server that speaks OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    base_url: str = Field(
        default="https://api.openai.com/v1", description="Base URL of the OpenAI-compatible API, ending in /v1."
    )
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("api_key", "api_token", "auth_credential"),
        description="Bearer token sent to the server (llama-stack's api_key; api_token for vLLM).",
    )
    allowed_models: list[str] | None = Field(
        default=None, description="Models to expose; all the server lists when unset."
    )
    timeout_s: float = Field(default=600.0, gt=0, description="Seconds to wait for an answer.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Seconds to wait for a connection.")
    max_connections: int = Field(default=1024, ge=1, description="Connections kept open to the server at most.")
    max_response_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="Largest answer body the batch executor reads, in bytes; past it the request fails with the "
        "error code response_too_large (not retried) and the connection is dropped.",
    )
    max_retries: int = Field(
        default=2, ge=0, description="Retries of the typed SDK calls (the batch executor retries on its own)."
    )
    network: dict[str, Any] | None = Field(
        default=None, description="llama-stack's network block; network.tls.verify is honoured."
    )

    @property
    def tls_verify(self) -> bool | str:
        """``network.tls.verify``: a bool, or the path of a CA bundle."""
        tls = (self.network or {}).get("tls") or {}
        verify = tls.get("verify", True)
        return verify if isinstance(verify, bool | str) else True


class OpenAIConfig(OpenAICompatConfig):
    """OpenAI itself, or any compatible server named by ``base_url``."""

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The ``config`` block of a sample run config."""
        return {
            "api_key": "${env.OPENAI_API_KEY:=}",
            "base_url": "${env.OPENAI_BASE_URL:=https://api.openai.com/v1}",
        }


class VLLMConfig(OpenAICompatConfig):
    """A vLLM server (llama-stack's ``remote::vllm`` fields: ``base_url``, ``api_token``, ``max_tokens``)."""

    base_url: str = Field(description="Base URL of the vLLM server, ending in /v1.")
    max_tokens: int = Field(default=4096, description="Accepted for llama-stack compatibility.")

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The ``config`` block of a sample run config."""
        return {
            "base_url": "${env.VLLM_URL:=http://localhost:8000/v1}",
            "api_token": "${env.VLLM_API_TOKEN:=fake}",
            "max_tokens": "${env.VLLM_MAX_TOKENS:=4096}",
        }


class OllamaConfig(OpenAICompatConfig):
    """An Ollama server's OpenAI-compatible API."""

    base_url: str = Field(
        default="http://localhost:11434/v1", description="Base URL of Ollama's OpenAI API, ending in /v1."
    )

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The ``config`` block of a sample run config."""
        return {"base_url": "${env.OLLAMA_URL:=http://localhost:11434/v1}"}
