"""inline::localfs: the Files conformance suite through build_stack (SQLite and memory stores), plus disk checks."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from llama_batches import build_stack
from llama_batches.api import ExpiresAfter, FileObject, FilePurpose, Files
from llama_batches.api.files import LateExpiresAfter, LateExpiryFiles, late_expiry_files
from llama_batches.errors import NotFoundError, PayloadTooLargeError
from llama_batches.storage import MemoryDatabase
from llama_batches_localfs.config import LocalfsFilesImplConfig
from llama_batches_localfs.files import STALE_PART_SECS, LocalfsFilesImpl, safe_filename

from .conformance.files import JSONL, FilesConformance, chunks, read_all


def files_config(tmp_path: Path, backend: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A run config with only the files API on inline::localfs."""
    return {
        "version": 2,
        "apis": ["files"],
        "providers": {
            "files": [
                {
                    "provider_id": "localfs",
                    "provider_type": "inline::localfs",
                    "config": {
                        "storage_dir": str(tmp_path / "files"),
                        "metadata_store": {"backend": "sql_default", "table_name": "files_metadata"},
                        **extra,
                    },
                }
            ]
        },
        "storage": {"backends": {"sql_default": backend}},
    }


class TestLocalfsOnMemory(FilesConformance):
    @pytest.fixture
    async def files_impl(self, tmp_path: Path) -> AsyncIterator[Files]:
        async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
            yield stack.files


def _files_on_disk(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "files").iterdir())


async def test_an_upload_over_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    config = files_config(tmp_path, {"type": "sql_sqlite", "db_path": str(tmp_path / "sql.db")}, max_file_size_bytes=10)
    async with build_stack(config) as stack:
        kept = await stack.files.openai_upload_file(chunks([b"0123456789"]), FilePurpose.batch, "ok.jsonl")
        with pytest.raises(PayloadTooLargeError) as info:
            await stack.files.openai_upload_file(chunks([b"01234", b"56789", b"X"]), FilePurpose.batch, "big")
        assert info.value.status == 413 and info.value.param == "file"
        assert _files_on_disk(tmp_path) == [kept.id]
        assert [f.id for f in (await stack.files.openai_list_files()).data] == [kept.id]


async def test_a_stream_that_breaks_midway_stores_nothing(tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"half a file"
        raise ConnectionResetError("client went away")

    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
        with pytest.raises(ConnectionResetError):
            await stack.files.openai_upload_file(broken(), FilePurpose.batch, "in.jsonl")
        assert _files_on_disk(tmp_path) == []
        assert (await stack.files.openai_list_files()).data == []


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("/abs/path/in.jsonl", "in.jsonl"),
        ("..", "upload"),
        ("", "upload"),
        ("bad\x00na\nme.jsonl", "badname.jsonl"),
        ("é" * 200, "é" * 127),
    ],
)
def test_client_file_names_are_reduced_to_plain_names(given: str, kept: str) -> None:
    assert safe_filename(given) == kept


async def test_content_lives_under_the_file_id_whatever_the_client_name(tmp_path: Path) -> None:
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
        created = await stack.files.openai_upload_file(chunks([JSONL]), FilePurpose.batch, "../../escape.jsonl")
        assert created.filename == "escape.jsonl"
        assert _files_on_disk(tmp_path) == [created.id]
        assert not (tmp_path.parent / "escape.jsonl").exists()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_files_expire_after_their_lifetime(tmp_path: Path) -> None:
    clock = Clock(1_000_000.0)
    config = LocalfsFilesImplConfig.model_validate(
        {"storage_dir": str(tmp_path / "files"), "metadata_store": {"backend": "m", "table_name": "f"}}
    )
    table = await MemoryDatabase().table("f", FileObject)
    files = LocalfsFilesImpl(config, table, clock=clock)
    await files.initialize()
    try:
        short = await files.openai_upload_file(chunks([JSONL]), FilePurpose.batch, "a", ExpiresAfter(seconds=3600))
        default = await files.openai_upload_file(chunks([JSONL]), FilePurpose.batch, "b")
        assert short.expires_at == 1_000_000 + 3600
        assert default.expires_at == 1_000_000 + config.ttl_secs
        clock.now += 3600
        with pytest.raises(NotFoundError, match="expired"):
            await files.openai_retrieve_file(short.id)
        assert _files_on_disk(tmp_path) == [default.id]
        assert await read_all(files, default.id) == JSONL
    finally:
        await files.shutdown()


def _late_files(files: Files) -> LateExpiryFiles:
    taking = late_expiry_files(files)
    assert taking is not None  # inline::localfs takes a late expiry
    return taking


async def _then(parts: list[bytes], at_end: Callable[[], None]) -> AsyncIterator[bytes]:
    """``parts``, then ``at_end()`` called once they are all read (as the server reads the form's last fields)."""
    for part in parts:
        yield part
    at_end()


@pytest.mark.parametrize("expiry", [ExpiresAfter(seconds=7200), None], ids=["seconds", "none"])
async def test_a_late_expiry_is_read_once_the_content_is_read(tmp_path: Path, expiry: ExpiresAfter | None) -> None:
    late = LateExpiresAfter()
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"}, ttl_secs=99_999)) as stack:
        created = await _late_files(stack.files).openai_upload_file(
            _then([b"a", b"b"], lambda: late.set(expiry)), FilePurpose.user_data, "late.txt", late
        )
        listed = (await stack.files.openai_list_files()).data
    assert created.expires_at == created.created_at + (expiry.seconds if expiry else 99_999)
    assert [f.model_dump() for f in listed] == [created.model_dump()]


async def test_a_late_expiry_that_never_comes_stores_nothing(tmp_path: Path) -> None:
    """The expiry of a late one that was not set by the content's end is a bug: the upload fails, leaving nothing."""
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
        with pytest.raises(RuntimeError, match="before the end of its content"):
            await _late_files(stack.files).openai_upload_file(
                chunks([b"x"]), FilePurpose.user_data, "a", LateExpiresAfter()
            )
        assert _files_on_disk(tmp_path) == []
        assert (await stack.files.openai_list_files()).data == []


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("invoice\u202egnp.exe", "invoicegnp.exe"),
        ("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061cname", "name"),
        ("c1\x85\x9b\x7f.txt", "c1.txt"),
        (
            "keep \u200d joiners \U0001f468\u200d\U0001f469 and ü",
            "keep \u200d joiners \U0001f468\u200d\U0001f469 and ü",
        ),
    ],
    ids=["rlo", "every-bidi-mark", "c1-and-del", "plain-unicode"],
)
def test_file_names_lose_bidi_and_c1_characters(given: str, kept: str) -> None:
    assert safe_filename(given) == kept


INVISIBLE = {
    "zero-width-space": "\u200b",
    "line-separator": "\u2028",
    "paragraph-separator": "\u2029",
    "byte-order-mark": "\ufeff",
    "soft-hyphen": "\u00ad",
    "mongolian-vowel-separator": "\u180e",
    "word-joiner": "\u2060",
    "invisible-times": "\u2062",
    "language-tag": "\U000e0001",
    "private-use": "\ue000",
    "unassigned": "\U0010fffe",
    "surrogate": "\ud800",
}


@pytest.mark.parametrize("char", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_file_names_lose_invisible_format_and_separator_characters(char: str) -> None:
    """Categories Cc, Cf, Zl, Zp, Co, Cs and Cn go, wherever they are; spaces (Zs) stay."""
    assert safe_filename(f"{char}re{char}port{char}.pdf{char}") == "report.pdf"
    assert safe_filename(f"a{char} b\u00a0c\u3000d.txt") == "a b\u00a0c\u3000d.txt"
    assert safe_filename(char * 3) == "upload"


async def test_a_content_stream_opened_before_a_delete_reads_the_whole_file(tmp_path: Path) -> None:
    """The file is opened when the stream is returned, so the download that raced a delete still sends it all."""
    data = b"x" * (3 * 1024 * 1024 + 5)
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
        created = await stack.files.openai_upload_file(chunks([data]), FilePurpose.user_data, "a.bin")
        stream = await stack.files.openai_retrieve_file_content(created.id)
        await stack.files.openai_delete_file(created.id)
        assert _files_on_disk(tmp_path) == []
        assert b"".join([chunk async for chunk in stream]) == data


async def test_content_gone_from_disk_is_a_not_found_before_any_byte(tmp_path: Path) -> None:
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
        created = await stack.files.openai_upload_file(chunks([JSONL]), FilePurpose.batch, "a.jsonl")
        (tmp_path / "files" / created.id).unlink()
        with pytest.raises(NotFoundError) as info:
            await stack.files.openai_retrieve_file_content(created.id)
        assert info.value.param == "file_id"


async def test_a_content_stream_dropped_unread_closes_its_file(tmp_path: Path) -> None:
    """A response never sent (the client went away) must not keep a file open (or warn: warnings are errors)."""
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})) as stack:
        created = await stack.files.openai_upload_file(chunks([JSONL]), FilePurpose.batch, "a.jsonl")
        stream = await stack.files.openai_retrieve_file_content(created.id)
        del stream
        closed = await stack.files.openai_retrieve_file_content(created.id)
        await closed.aclose()  # type: ignore[attr-defined]
        assert [chunk async for chunk in closed] == []


async def test_stale_part_files_are_swept_at_start_and_fresh_ones_kept(tmp_path: Path) -> None:
    """A ``.part`` untouched for STALE_PART_SECS is a killed upload's; a fresh one may be another process's."""
    directory = tmp_path / "files"
    directory.mkdir()
    stale, fresh, other = directory / ".file-old.part", directory / ".file-new.part", directory / "file-kept"
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    long_ago = time.time() - STALE_PART_SECS - 5
    os.utime(stale, (long_ago, long_ago))
    os.utime(other, (long_ago, long_ago))
    async with build_stack(files_config(tmp_path, {"type": "sql_memory"})):
        assert sorted(p.name for p in directory.iterdir()) == [".file-new.part", "file-kept"]


def _stale_part(directory: Path, name: str) -> Path:
    """A ``.part`` file last written longer than STALE_PART_SECS ago: a killed upload's."""
    path = directory / name
    path.write_bytes(b"partial")
    long_ago = time.time() - STALE_PART_SECS - 5
    os.utime(path, (long_ago, long_ago))
    return path


async def _until_gone(path: Path, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while await asyncio.to_thread(path.exists):
            await asyncio.sleep(0.02)


async def test_stale_part_files_are_swept_while_the_provider_runs_and_not_after_shutdown(tmp_path: Path) -> None:
    """Every ``part_sweep_interval_secs`` (real time, here 0.1 s), not only at start; fresh ones are kept."""
    directory = tmp_path / "files"
    config = files_config(tmp_path, {"type": "sql_memory"}, part_sweep_interval_secs=0.1)
    async with build_stack(config):
        fresh = directory / ".file-fresh.part"
        fresh.write_bytes(b"an upload in progress in another process")
        for i in range(3):  # each after the sweep at start: found by the periodic ones
            await _until_gone(_stale_part(directory, f".file-killed-{i}.part"))
        assert fresh.exists()
    after = _stale_part(directory, ".file-after-shutdown.part")
    await asyncio.sleep(0.4)
    assert after.exists()


async def test_an_upload_of_this_process_is_never_swept_however_long_it_stalls(tmp_path: Path) -> None:
    directory = tmp_path / "files"
    config = files_config(tmp_path, {"type": "sql_memory"}, part_sweep_interval_secs=0.05)
    resume = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"a": 1}\n'
        await resume.wait()
        yield b'{"b": 2}\n'

    async with build_stack(config) as stack:
        upload = asyncio.create_task(stack.files.openai_upload_file(stalled(), FilePurpose.batch, "slow.jsonl"))
        async with asyncio.timeout(5):
            while not (parts := list(directory.glob(".*.part"))):
                await asyncio.sleep(0.01)
        long_ago = time.time() - 10 * STALE_PART_SECS  # as if the client had sent nothing for 50 minutes
        os.utime(parts[0], (long_ago, long_ago))
        await asyncio.sleep(0.3)  # six sweeps
        assert parts[0].exists()
        resume.set()
        created = await upload
        assert await read_all(stack.files, created.id) == b'{"a": 1}\n{"b": 2}\n'


@pytest.mark.parametrize("interval", [0, -1, STALE_PART_SECS + 1])
def test_the_sweep_interval_is_positive_and_at_most_stale_part_secs(interval: float) -> None:
    with pytest.raises(ValueError, match="part_sweep_interval_secs"):
        LocalfsFilesImplConfig.model_validate(
            {
                "storage_dir": "x",
                "metadata_store": {"backend": "m", "table_name": "f"},
                "part_sweep_interval_secs": interval,
            }
        )
    assert (
        LocalfsFilesImplConfig.model_validate(
            {"storage_dir": "x", "metadata_store": {"backend": "m", "table_name": "f"}}
        ).part_sweep_interval_secs
        == STALE_PART_SECS
    )
