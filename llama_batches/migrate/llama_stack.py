"""Import a llama-stack 0.7.3 deployment's batches and files into llama-batches, ids kept, idempotently.

```python
report = await import_llama_stack(ImportOptions(source=Path("run.yaml"), dry_run=True))
print(report.count("batch", Outcome.would_import))
```

The source is read as llama-stack wrote it (see :mod:`.source`); the destination is the stack of a llama-batches
run config (by default the same file: ``llama-batches serve`` runs llama-stack configs), built without running
batches, whose batches and files providers implement :mod:`llama_batches.api.importing`. Files are imported first
(content streamed), then batches, each an insert-if-absent keyed on (owner, id): a second run imports nothing new.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

from ..api import Api, Batch, BatchStatus
from ..api.importing import BatchImporter, FileImporter
from ..config import load_config
from ..errors import ConfigError, LlamaBatchesError
from ..principal import ANONYMOUS
from ..registry import ProviderRegistry
from ..stack import Stack, build_stack
from ..workers import with_execution
from .collisions import check_collisions
from .convert import (
    UNFINISHED_STATUSES,
    Unfinished,
    batch_owner,
    convert_batch,
    file_object,
    has_attributes,
    map_owner,
    parse_batch,
)
from .reader import FileRow, MigrationError, Readers, SourceReader
from .source import BatchesSource, FilesSource, LlamaStackSource, read_source

__all__ = ["ImportOptions", "ImportReport", "ItemResult", "Kind", "Outcome", "import_llama_stack"]

Kind = Literal["file", "batch"]
READ_CHUNK_BYTES = 1024 * 1024


class Outcome(StrEnum):
    """What the import did, or would do, with one item."""

    imported = "imported"
    would_import = "would import"
    present = "already imported"
    failed = "failed"


@dataclass(frozen=True)
class ImportOptions:
    """An import: from the llama-stack run config ``source`` into the llama-batches run config ``destination``."""

    source: Path
    destination: Path | None = None
    """Default: ``source``."""
    dry_run: bool = False
    default_owner: str = ANONYMOUS
    """The principal of rows llama-stack stored without an owner (it ran without authentication)."""
    unfinished: Unfinished = Unfinished.resume
    page_size: int = 500


@dataclass(frozen=True)
class ItemResult:
    """One file or batch and its outcome; ``detail`` says more (an error, an unfinished batch, attributes)."""

    kind: Kind
    id: str
    owner: str
    outcome: Outcome
    detail: str = ""


@dataclass
class ImportReport:
    """Counts of outcomes per kind."""

    source: LlamaStackSource
    dry_run: bool
    counts: Counter[tuple[Kind, Outcome]] = field(default_factory=Counter)
    failures: list[ItemResult] = field(default_factory=list)

    def add(self, result: ItemResult) -> None:
        """Count ``result``."""
        self.counts[(result.kind, result.outcome)] += 1
        if result.outcome is Outcome.failed:
            self.failures.append(result)

    def count(self, kind: Kind, outcome: Outcome) -> int:
        """How many items of ``kind`` had ``outcome``."""
        return self.counts[(kind, outcome)]

    def found(self, kind: Kind) -> int:
        """How many items of ``kind`` the source holds."""
        return sum(n for (k, _), n in self.counts.items() if k == kind)


OnItem = Callable[[ItemResult], None]


async def _content(path: Path) -> AsyncIterator[bytes]:
    """The file at ``path`` by chunks, opened on first read (never, when the importer does not read it)."""
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK_BYTES):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


def _content_path(row: FileRow, source: FilesSource) -> Path | None:
    """Where the content of ``row`` is: its ``file_path``, else ``storage_dir/<id>`` (a moved directory)."""
    for candidate in (row.file_path, str(source.storage_dir / row.id)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


class _Importer:
    """One import run: the source's readers, the destination's importers, the report."""

    def __init__(self, options: ImportOptions, source: LlamaStackSource, stack: Stack, on_item: OnItem) -> None:
        self.options, self.source, self.on_item = options, source, on_item
        files, batches = stack.impls.get(Api.files), stack.impls.get(Api.batches)
        if not isinstance(files, FileImporter):
            raise _cannot_import(stack, Api.files, "import_file")
        if not isinstance(batches, BatchImporter):
            raise _cannot_import(stack, Api.batches, "import_batch")
        self.files, self.batches = files, batches
        self.report = ImportReport(source, options.dry_run)
        self.now = int(time.time())

    def _record(self, result: ItemResult) -> None:
        self.report.add(result)
        self.on_item(result)

    async def run(self, readers: Readers) -> ImportReport:
        files_reader = await readers.get(self.source.files.database)
        await self._all_files(files_reader)
        await self._all_batches(await readers.get(self.source.batches.database), files_reader)
        return self.report

    async def _all_files(self, reader: SourceReader) -> None:
        source, after = self.source.files, ""
        while rows := await reader.file_page(source.table, after, self.options.page_size):
            for row in rows:
                self._record(await self._file(row, source))
            after = rows[-1].id

    async def _file(self, row: FileRow, source: FilesSource) -> ItemResult:
        try:
            owner = map_owner(row.owner_principal, self.options.default_owner)
        except MigrationError as exc:
            return ItemResult("file", row.id, "?", Outcome.failed, exc.message)
        detail = f"{row.filename}, {row.bytes} bytes, purpose {row.purpose}"
        if has_attributes(row):
            detail += "; its access_attributes are not imported"
        if await self.files.file_exists(row.id, owner):
            return ItemResult("file", row.id, owner, Outcome.present, detail)
        path = _content_path(row, source)
        if path is None:
            where = f"{row.file_path} (nor {source.storage_dir / row.id})"
            return ItemResult("file", row.id, owner, Outcome.failed, f"its content is missing: no file {where}")
        if self.options.dry_run:
            return ItemResult("file", row.id, owner, Outcome.would_import, detail)
        try:
            done = await self.files.import_file(file_object(row), _content(path), owner)
        except (LlamaBatchesError, OSError) as exc:
            return ItemResult("file", row.id, owner, Outcome.failed, f"{path}: {_message(exc)}")
        return ItemResult("file", row.id, owner, Outcome.imported if done else Outcome.present, detail)

    async def _all_batches(self, reader: SourceReader, files_reader: SourceReader) -> None:
        source, after = self.source.batches, ""
        while page := await reader.kv_page(source.table, source.prefix, after, self.options.page_size):
            parsed: list[tuple[str, Batch | MigrationError]] = []
            for key, value in page:
                try:
                    parsed.append((key, parse_batch(key, value)))
                except MigrationError as exc:
                    parsed.append((key, exc))
            owners = await files_reader.file_owners(self.source.files.table, _file_ids(parsed))
            for key, batch in parsed:
                if isinstance(batch, MigrationError):
                    self._record(
                        ItemResult("batch", key.removeprefix(source.prefix), "?", Outcome.failed, batch.message)
                    )
                else:
                    self._record(await self._batch(batch, owners, source))
            after = page[-1][0]

    async def _batch(self, batch: Batch, owners: dict[str, str | None], source: BatchesSource) -> ItemResult:
        try:
            owner = batch_owner(batch, owners, self.options.default_owner)
        except MigrationError as exc:
            return ItemResult("batch", batch.id, "?", Outcome.failed, exc.message)
        converted = convert_batch(batch, self.options.unfinished, self.now)
        detail = f"{batch.status}" + (f" -> {converted.status}" if converted.status != batch.status else "")
        if BatchStatus(batch.status) in UNFINISHED_STATUSES and self.options.unfinished is Unfinished.resume:
            detail += " (llama-stack left it unfinished: it runs again from its first line)"
        if await self.batches.batch_exists(batch.id, owner):
            return ItemResult("batch", batch.id, owner, Outcome.present, detail)
        if self.options.dry_run:
            return ItemResult("batch", batch.id, owner, Outcome.would_import, detail)
        try:
            done = await self.batches.import_batch(converted, owner)
        except LlamaBatchesError as exc:
            return ItemResult("batch", batch.id, owner, Outcome.failed, exc.message)
        return ItemResult("batch", batch.id, owner, Outcome.imported if done else Outcome.present, detail)


def _message(exc: BaseException) -> str:
    return exc.message if isinstance(exc, LlamaBatchesError) else str(exc)


def _file_ids(parsed: list[tuple[str, Batch | MigrationError]]) -> list[str]:
    ids = {
        file_id
        for _, batch in parsed
        if isinstance(batch, Batch)
        for file_id in (batch.output_file_id, batch.error_file_id, batch.input_file_id)
        if file_id
    }
    return sorted(ids)


def _cannot_import(stack: Stack, api: Api, method: str) -> ConfigError:
    if api not in stack.impls:
        return ConfigError(f"providers.{api.value}", f"the destination config has no {api.value} provider")
    provider = next((p.spec.provider_type for p in stack.plan if p.api is api), "?")
    return ConfigError(
        f"providers.{api.value}",
        f"the {api.value} provider {provider} cannot import (it has no {method}); use inline::reference batches "
        "and inline::localfs files",
    )


def _destination(options: ImportOptions, registry: ProviderRegistry | None) -> Stack:
    config = with_execution(load_config(options.destination or options.source), False)
    return build_stack(config, registry=registry)


async def import_llama_stack(
    options: ImportOptions, *, on_item: OnItem | None = None, registry: ProviderRegistry | None = None
) -> ImportReport:
    """Import (or, with ``dry_run``, look at) the llama-stack deployment of ``options.source``; ``on_item`` hears
    about every item. Raises ConfigError or MigrationError when the source or the destination cannot be used;
    an item that cannot be imported is a ``failed`` outcome and the others go on."""
    source = read_source(options.source)
    stack = _destination(options, registry)
    check_collisions(source, stack)
    async with stack, Readers() as readers:
        importer = _Importer(options, source, stack, on_item or (lambda _: None))
        return await importer.run(readers)
