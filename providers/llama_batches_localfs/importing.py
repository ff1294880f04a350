"""Files imported from elsewhere (``llama-batches import-llama-stack``): content streamed into the storage
directory as an upload's is (``.part``, fsync, rename), then the metadata row, ids kept.

A file already known for its owner is left as it is and its content not read. Should the process stop between the
content and the row, the next import writes the content again (same id, same bytes) and then the row.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol

from llama_batches.api import FileObject, FilePurpose
from llama_batches.storage import Table

__all__ = ["FileImport"]


class _Localfs(Protocol):
    _table: Table[FileObject]

    async def _write(self, file_id: str, chunks: AsyncIterable[bytes]) -> int: ...


class FileImport:
    """Mixin of :class:`~.files.LocalfsFilesImpl`, implementing
    :class:`llama_batches.api.importing.FileImporter`."""

    async def file_exists(self: _Localfs, file_id: str, owner: str) -> bool:
        return await self._table.get(owner, file_id) is not None

    async def import_file(self: _Localfs, file: FileObject, content: AsyncIterable[bytes], owner: str) -> bool:
        if await self._table.get(owner, file.id) is not None:
            return False
        purpose = FilePurpose.parse(file.purpose)
        size = await self._write(file.id, content)
        record = file.model_copy(update={"bytes": size, "object": "file", "status": file.status or "processed"})
        return await self._table.insert(owner, record, tag=purpose.value)
