"""Configuration of the ``inline::reference`` batches engine.

llama-stack's fields (``kvstore``, ``max_concurrent_batches``, ``max_concurrent_requests_per_batch``) keep their
meaning, so its configs run unchanged; the rest have defaults.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llama_batches.storage import KVStoreReference

__all__ = ["ReferenceBatchesImplConfig", "ResponseBody"]


class ResponseBody(StrEnum):
    """How an output line carries the backend's answer."""

    object = "object"
    json_string = "json_string"


class ReferenceBatchesImplConfig(BaseModel):
    """The reference batches engine: idempotent creation, streamed validation, a durable sliding-window executor."""

    model_config = ConfigDict(extra="ignore")

    WORKER_SWITCH: ClassVar[str] = "execute"
    """This engine runs batches in the background; ``execute`` turns that on or off (:mod:`llama_batches.workers`)."""

    kvstore: KVStoreReference = Field(
        description="Store for batches and request checkpoints (its namespace names the tables)."
    )
    max_concurrent_batches: int = Field(
        default=4, ge=1, description="Batches this process runs at the same time (other workers take the rest)."
    )
    execute: bool = Field(
        default=True,
        description="Run batches in this process (a worker). Off for API-only servers (`serve --no-worker`).",
    )
    lease_ttl_s: float = Field(
        default=30.0, gt=0, description="A worker's claim on a batch lasts this long unless renewed (every third)."
    )
    poll_interval_s: float = Field(default=1.0, gt=0, description="How often a worker looks for batches to run.")
    max_concurrent_requests_per_batch: int = Field(
        default=10, ge=1, description="Sliding window: requests of one batch in flight at once."
    )
    max_concurrent_requests: int = Field(
        default=256, ge=1, description="Requests in flight at once over all batches (global cap)."
    )
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="Rate limit on requests sent to inference, over all batches; none when unset."
    )
    max_attempts: int = Field(
        default=5, ge=1, description="Attempts per request on 408, 429, 5xx and connection errors (first one included)."
    )
    retry_initial_delay_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles each attempt, with jitter."
    )
    retry_max_delay_s: float = Field(default=30.0, ge=0, description="Longest delay between attempts.")
    cancel_grace_s: float = Field(
        default=5.0,
        ge=0,
        description="After a cancel, how long the requests in flight may finish (their results are kept) before "
        "they are abandoned.",
    )
    completion_windows: list[str] = Field(
        default_factory=lambda: ["24h"], description="completion_window values accepted at creation (e.g. 24h, 7d)."
    )
    max_batches_in_flight_per_principal: int | None = Field(
        default=None,
        ge=1,
        description="Batches one principal may have validating, in progress, finalizing or cancelling; past it a "
        "create is a 429 with Retry-After (a replay of an existing key never is). No limit when unset.",
    )
    in_flight_retry_after_s: int = Field(default=30, ge=1, description="Retry-After of that 429, in seconds.")
    max_requests_per_batch: int = Field(default=50_000, ge=1, description="Most lines an input file may have.")
    max_input_bytes: int = Field(default=200 * 1024 * 1024, ge=1, description="Largest input file, in bytes.")
    max_line_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Longest input line, in bytes.")
    max_reported_errors: int = Field(
        default=1000, ge=1, description="Validation errors kept in a failed batch's errors list."
    )
    max_reported_error_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Bytes of error messages kept in a failed batch's errors list."
    )
    response_body: ResponseBody = Field(
        default=ResponseBody.object,
        description="How an output line carries the backend's answer: `object`, OpenAI's shape "
        '(`"response": {"body": {...}}`), or `json_string`, that object serialised into a string, as llama-stack\'s '
        "own inline::reference writes it (for readers written against it, such as llama-stack's test suite).",
    )
    max_batch_attempts: int = Field(
        default=5,
        ge=1,
        description="Runs of one batch that may stop on an error (counted in the store, over every worker and "
        "restart); after the last one the batch is failed with the reason, its partial results kept.",
    )
    batch_retry_initial_delay_s: float = Field(
        default=2.0,
        ge=0,
        description="Delay before a batch whose run stopped on an error runs again; doubles each time, with jitter.",
    )
    batch_retry_max_delay_s: float = Field(default=300.0, ge=0, description="Longest delay between runs of a batch.")
    max_unrecorded_results: int = Field(
        default=256,
        ge=1,
        description="Results of one batch waiting to be stored (or being stored) before dispatch pauses for the "
        "store. With the window, it bounds what a crash or a store that stays down makes run again.",
    )
    store_retry_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a failing checkpoint write is retried, dispatch paused meanwhile, before the run "
        "stops on it (and is retried as a whole).",
    )

    @field_validator("completion_windows")
    @classmethod
    def _windows_are_durations(cls, windows: list[str]) -> list[str]:
        for window in windows:
            if not re.fullmatch(r"[1-9][0-9]*[smhd]", window):
                raise ValueError(f"'{window}' is not a duration like 24h, 7d, 90m or 3600s")
        return windows

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The entry a distribution's run config uses."""
        return {"kvstore": {"backend": "kv_default", "namespace": "batches"}}
