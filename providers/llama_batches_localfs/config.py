"""Configuration of the ``inline::localfs`` files provider (llama-stack's field names)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from llama_batches.storage import SqlStoreReference

__all__ = ["STALE_PART_SECS", "LocalfsFilesImplConfig"]

STALE_PART_SECS = 300.0
"""A ``.part`` file not written to for this long is a killed upload's leftover (a live upload writes every 10 s)."""


class LocalfsFilesImplConfig(BaseModel):
    """Files on a local (or shared) directory, metadata in a SQL store."""

    storage_dir: str = Field(description="Directory holding the files' content; created when missing.")
    metadata_store: SqlStoreReference = Field(description="SQL store for the files' metadata.")
    ttl_secs: int = Field(
        default=365 * 24 * 60 * 60,
        ge=1,
        description="Lifetime of a file uploaded without expires_after, in seconds.",
    )
    max_file_size_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="Largest file accepted, in bytes; a larger upload is refused with 413 and nothing is kept.",
    )
    part_sweep_interval_secs: float = Field(
        default=STALE_PART_SECS,
        gt=0,
        le=STALE_PART_SECS,
        description=(
            "Seconds between two sweeps of storage_dir (besides the one at start) for the .part files of uploads "
            "killed midway: one not written to for 5 minutes is removed, this server's uploads in progress never "
            "are. More than 0, at most 300, so that a leftover is gone within 10 minutes."
        ),
    )

    @classmethod
    def sample_run_config(cls, __distro_dir__: str = "~/.llama/llama-batches") -> dict[str, Any]:
        """The ``config`` block of a sample run config, files under ``<distro_dir>/files``."""
        return {
            "storage_dir": "${env.FILES_STORAGE_DIR:=" + __distro_dir__ + "/files}",
            "metadata_store": SqlStoreReference(backend="sql_default", table_name="files_metadata").model_dump(
                exclude_none=True
            ),
        }
