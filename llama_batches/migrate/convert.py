"""llama-stack's rows as llama-batches objects: owners, file objects and batches (unfinished ones decided here)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum

import orjson

from ..api import Batch, BatchError, BatchRequestCounts, BatchStatus, FileObject
from ..api.batches import BatchErrors
from .reader import FileRow, MigrationError

__all__ = [
    "UNFINISHED_STATUSES",
    "Unfinished",
    "batch_owner",
    "convert_batch",
    "file_object",
    "has_attributes",
    "map_owner",
    "parse_batch",
]

UNFINISHED_STATUSES = frozenset({BatchStatus.validating, BatchStatus.in_progress, BatchStatus.finalizing})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_PRINCIPAL = 256
_WINDOW = re.compile(r"([1-9][0-9]*)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Unfinished(StrEnum):
    """What becomes of a batch llama-stack left validating, in progress or finalizing (it never resumes them)."""

    resume = "resume"
    """Imported as ``validating``: llama-batches validates it and runs it from its first line (or expires it)."""
    fail = "fail"
    """Imported as ``failed``, with the error ``import_unfinished``."""


def map_owner(principal: str | None, default: str) -> str:
    """The llama-batches principal of a llama-stack row's ``owner_principal`` (``""``/None: unowned -> ``default``)."""
    if not principal:
        return default
    if len(principal) > _MAX_PRINCIPAL or _CONTROL.search(principal):
        raise MigrationError(f"the owner {principal[:80]!r} cannot be a llama-batches principal")
    return principal


def batch_owner(batch: Batch, owners: Mapping[str, str | None], default: str) -> str:
    """llama-stack's batches have no owner: a batch belongs to whoever owns the files its run wrote (its creator,
    whose request the run inherited), else its input file, else ``default``."""
    for file_id in (batch.output_file_id, batch.error_file_id, batch.input_file_id):
        if file_id is not None and file_id in owners:
            return map_owner(owners[file_id], default)
    return default


def file_object(row: FileRow) -> FileObject:
    """The file object of a row of ``openai_files``."""
    return FileObject(
        id=row.id,
        object="file",
        bytes=row.bytes or 0,
        created_at=row.created_at or 0,
        expires_at=row.expires_at,
        filename=row.filename or row.id,
        purpose=row.purpose or "batch",  # checked by the files provider
        status="processed",
    )


def has_attributes(row: FileRow) -> bool:
    """Whether the row carries llama-stack access attributes (not imported: llama-batches scopes by principal)."""
    if row.access_attributes is None:
        return False
    try:
        return orjson.loads(row.access_attributes) not in (None, {}, [])
    except orjson.JSONDecodeError:
        return True


def parse_batch(key: str, value: str) -> Batch:
    """The batch stored under ``key``; MigrationError naming the key when it is not one."""
    try:
        return Batch.model_validate_json(value)
    except ValueError as exc:
        raise MigrationError(f"the value of '{key}' is not a batch: {str(exc)[:300]}") from exc


def _window_seconds(window: str) -> int:
    match = _WINDOW.fullmatch(window)
    return int(match.group(1)) * _UNITS[match.group(2)] if match else 86400


def convert_batch(batch: Batch, unfinished: Unfinished, now: int) -> Batch:
    """``batch`` as llama-batches stores it. A finished batch is kept as it is. A ``cancelling`` one is
    ``cancelled`` (llama-stack keeps no partial results). One left validating, in progress or finalizing is reset to
    ``validating`` (counts and files cleared, ``expires_at`` set from its window) or failed, as ``unfinished`` says."""
    status = BatchStatus(batch.status)
    if status is BatchStatus.cancelling:
        return batch.model_copy(update={"status": "cancelled", "cancelled_at": batch.cancelling_at or now})
    if status not in UNFINISHED_STATUSES:
        return batch
    if unfinished is Unfinished.fail:
        message = (
            f"llama-stack stopped while this batch was {status.value} (it never resumes a batch); it was imported "
            "as failed. Create it again to run it."
        )
        error = BatchError(code="import_unfinished", message=message, param=None, line=None)
        return batch.model_copy(
            update={"status": "failed", "failed_at": now, "errors": BatchErrors(object="list", data=[error])}
        )
    return batch.model_copy(
        update={
            "status": "validating",
            "in_progress_at": None,
            "finalizing_at": None,
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "usage": None,
            "request_counts": BatchRequestCounts(total=0, completed=0, failed=0),
            "expires_at": batch.expires_at or batch.created_at + _window_seconds(batch.completion_window),
        }
    )
