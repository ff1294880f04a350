"""Configuration of the ``remote::passthrough`` batches and files providers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from llama_batches.storage import KVStoreReference

__all__ = ["PassthroughBatchesConfig", "PassthroughFilesConfig", "RemoteConfig"]


class RemoteConfig(BaseModel):
    """Where the remote OpenAI-compatible API is and how to call it."""

    model_config = ConfigDict(extra="ignore")

    base_url: str = Field(
        description="Base URL of the remote API, ending in /v1 (OpenAI, a hosted provider, another llama-batches)."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer token for the remote; write ${env.X} to read it from the environment."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Seconds to wait for the remote's answer.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Seconds to wait for a connection.")
    max_retries: int = Field(
        default=2, ge=0, description="Retries of a call on connection errors, 408, 429 and 5xx (openai SDK policy)."
    )

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The entry a distribution's run config uses."""
        return {
            "base_url": "${env.PASSTHROUGH_URL:=https://api.openai.com/v1}",
            "api_key": "${env.PASSTHROUGH_API_KEY:=}",
        }


class PassthroughFilesConfig(RemoteConfig):
    """Files on the remote's Files API, each owned by the principal that uploaded it."""

    ownership: KVStoreReference = Field(
        description="Store of which principal owns which remote file (another principal's file is a 404)."
    )

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The entry a distribution's run config uses."""
        return {
            **RemoteConfig.sample_run_config(__distro_dir__),
            "ownership": {"backend": "kv_default", "namespace": "passthrough_files"},
        }


class PassthroughBatchesConfig(RemoteConfig):
    """Batches on the remote's Batches API, with a local idempotency ledger."""

    ledger: KVStoreReference = Field(
        description="Store of idempotency keys ((principal, key) -> (parameters' fingerprint, remote batch id)) and of "
        "which principal owns which remote batch (another principal's batch is a 404)."
    )
    claim_wait_s: float = Field(
        default=30.0, gt=0, description="How long a create waits for a concurrent create with the same key to finish."
    )
    lost_create_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="After a create's answer is lost (timeout, crash), how long past timeout_s the create may still "
        "land on the remote; the key's next create waits that long before looking for it and creating again.",
    )
    recovery_pages: int = Field(
        default=10, ge=1, description="Pages of the remote's batch list searched for a create whose answer was lost."
    )

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The entry a distribution's run config uses."""
        return {
            **RemoteConfig.sample_run_config(__distro_dir__),
            "ledger": {"backend": "kv_default", "namespace": "passthrough"},
        }
