"""Configuration of the ``inline::localfs`` files provider (llama-stack's field names)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from llama_batches.storage import SqlStoreReference

__all__ = ["LocalfsFilesImplConfig"]


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
