"""Optional capabilities of a provider: taking in rows that were written elsewhere (a migration), keeping their ids.

A batches or files provider that can import implements one of these Protocols besides its API's; the importers in
:mod:`llama_batches.migrate` check for them with ``isinstance`` and say which provider cannot import otherwise.
Every import is an insert-if-absent keyed on (owner, id): running a migration again imports nothing new.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol, runtime_checkable

from .batches import Batch
from .files import FileObject

__all__ = ["BatchImporter", "FileImporter"]


@runtime_checkable
class BatchImporter(Protocol):
    """A batches provider that can take in existing batches as they are, ids included."""

    async def batch_exists(self, batch_id: str, owner: str) -> bool:
        """Whether ``owner`` has a batch ``batch_id`` (imported or not).

        :param batch_id: the batch's id.
        :param owner: the principal the batch belongs to.
        """
        ...

    async def import_batch(self, batch: Batch, owner: str) -> bool:
        """Store ``batch`` for ``owner`` with its id, status and timestamps, unless ``owner`` already has a batch
        with that id. A batch in an active status (validating, in_progress, finalizing, cancelling) is taken up by
        the provider's engine like one of its own.

        :param batch: the batch object as the other system stored it.
        :param owner: the principal the batch belongs to.
        :returns: True when stored, False when it was already there.
        """
        ...


@runtime_checkable
class FileImporter(Protocol):
    """A files provider that can take in existing files as they are, ids included."""

    async def file_exists(self, file_id: str, owner: str) -> bool:
        """Whether ``owner`` has a file ``file_id`` (imported or not).

        :param file_id: the file's id.
        :param owner: the principal the file belongs to.
        """
        ...

    async def import_file(self, file: FileObject, content: AsyncIterable[bytes], owner: str) -> bool:
        """Store ``file`` for ``owner`` with its id, name, purpose and timestamps, its content read from
        ``content`` (streamed, never held whole), unless ``owner`` already has a file with that id: then
        ``content`` is not read. Its ``bytes`` are those of the content as stored.

        :param file: the file object as the other system stored it.
        :param content: the file's content.
        :param owner: the principal the file belongs to.
        :returns: True when stored, False when it was already there.
        """
        ...
