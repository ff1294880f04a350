"""``/v1/files`` on a live server, once with its metadata on SQLite and once on PostgreSQL: ids and cursors no file
can have are answered before any query (a NUL is a 404 or an empty page on both backends, never a 500), and a
download that races a delete is either the whole file or a clean 404.

And, on SQLite (no store involved): the ``.part`` file a ``kill -9`` leaves mid-upload is swept when the files
provider starts again, or while it runs when the restart came too soon to tell it from a live upload, while a fresh
one (another process's upload) is kept; and a files provider that does not take a late expiry (a third party's,
installed as a distribution) gets uploads whose expiry follows the file spooled, with their expiry.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from llama_batches_localfs.files import STALE_PART_SECS

from .conftest import postgres_backend
from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config
from .test_server import Live, assert_openai_error, async_client

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """The ``sql_default`` backend: None for the SQLite one of ``reference_config``, else the test PostgreSQL
    (asked for here, outside the event loop, since the ``postgres`` fixture runs its own)."""
    if request.param == "sqlite":
        return None
    request.applymarker(pytest.mark.postgres)
    return postgres_backend(request.getfixturevalue("postgres"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(store: dict[str, Any] | None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    directory = tmp_path_factory.mktemp("files")
    async with FakeBackend() as backend:
        config = reference_config(directory, backend)
        if store is not None:
            namespace = f"n{os.urandom(5).hex()}"
            config["storage"]["backends"]["sql_default"] = store
            config["providers"]["batches"][0]["config"]["kvstore"]["namespace"] = namespace
            config["providers"]["files"][0]["config"]["metadata_store"]["table_name"] = f"{namespace}_files"
        async with ServerProcess(config, directory) as server:
            yield Live(server, backend, directory)


async def get(live: Live, method: str, path: str) -> tuple[int, Any]:
    """One request with the path sent exactly as written (percent escapes included)."""
    url = f"http://127.0.0.1:{live.server.port}{path}"
    async with aiohttp.ClientSession() as session, session.request(method, url) as answer:
        return answer.status, await answer.json()


IMPOSSIBLE_IDS = [
    "%00",
    "file-%00",
    "file-abc%00def",
    "file-%0A",
    "%20file-abc",
    "file-%E2%80%AE",
    "file-%C0%80",
    "file-%ED%A0%80",
    "." + "a" * 10,
    "file-" + "a" * 300,
    "..%5C..%5Cwindows",
]


@pytest.mark.parametrize("file_id", IMPOSSIBLE_IDS)
async def test_an_impossible_file_id_is_a_404_on_every_route(live: Live, file_id: str) -> None:
    for method, path in [("GET", ""), ("GET", "/content"), ("DELETE", "")]:
        status, body = await get(live, method, f"/v1/files/{file_id}{path}")
        assert status == 404, (method, path, body)
        error = assert_openai_error(body, param="file_id")
        assert error["code"] == "not_found" and "\x00" not in error["message"]


@pytest.mark.parametrize("cursor", ["%00", "file-%00", "file-abc%00", "x" * 1000, "%E2%80%AE", "file-unknown"])
async def test_a_cursor_no_file_can_have_gives_an_empty_page(live: Live, cursor: str) -> None:
    async with async_client(live.base_url) as client:
        created = await client.files.create(file=("a.txt", b"a"), purpose="user_data")
        for order in ("asc", "desc"):
            status, body = await get(live, "GET", f"/v1/files?after={cursor}&order={order}")
            assert status == 200, body
            assert (body["data"], body["has_more"]) == ([], False)
        page = await client.files.list(after=created.id, order="desc")  # a real cursor still pages
        await client.files.delete(created.id)
    assert created.id not in [f.id for f in page.data]


async def _download(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as answer:
        return answer.status, await answer.read()


async def test_a_download_racing_a_delete_is_the_whole_file_or_a_clean_404(live: Live) -> None:
    """Many downloads each started a little before or after a delete of their file: every answer is a complete
    200 (the file was opened before the answer started) or an OpenAI-shaped 404, never a broken body."""
    data = os.urandom(256 * 1024)
    outcomes: list[int] = []
    async with async_client(live.base_url) as client, aiohttp.ClientSession() as session:
        for attempt in range(40):
            created = await client.files.create(file=("race.bin", data), purpose="user_data")
            url = f"{live.base_url}/files/{created.id}/content"
            downloads = [asyncio.create_task(_download(session, url)) for _ in range(8)]
            await asyncio.sleep(0.0003 * (attempt % 10))
            await client.files.delete(created.id)
            for status, body in await asyncio.gather(*downloads):  # a broken body would raise here
                if status == 200:
                    assert body == data
                else:
                    assert status == 404
                    assert_openai_error(json.loads(body), param="file_id")
                outcomes.append(status)
    assert 200 in outcomes  # the race was run, not always lost


# kill -9 mid-upload ------------------------------------------------------------------------------------------------


def _start_upload(port: int, parts_before: bytes, size: int) -> socket.socket:
    """Send the head of a chunked multipart upload and ``size`` bytes of its file, then leave it hanging."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        b"POST /v1/files HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=killed\r\n\r\n"
    )
    body = parts_before + b'--killed\r\nContent-Disposition: form-data; name="file"; filename="k"\r\n\r\n'
    body += b"k" * size
    sock.sendall(head + b"%x\r\n%s\r\n" % (len(body), body))
    return sock


async def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_part_file_left_by_kill_9_is_swept_at_the_next_start(tmp_path: Path) -> None:
    files, spool = tmp_path / "files", tmp_path / "spool"
    async with FakeBackend() as backend:
        config = reference_config(tmp_path, backend)
        config["server"] = {"uploads": {"spool_dir": str(spool)}}
        server = ServerProcess(config, tmp_path)
        await server.start()
        assert server.process is not None
        purpose_first = b'--killed\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
        uploads = [_start_upload(server.port, purpose_first, 3 * 1024 * 1024), _start_upload(server.port, b"", 5000)]
        await _wait_for(lambda: any(p.stat().st_size >= 2 * 1024 * 1024 for p in files.glob(".*.part")))
        os.kill(server.process.pid, signal.SIGKILL)
        await server.process.wait()
        for sock in uploads:
            sock.close()
        left = list(files.glob(".*.part"))
        assert len(left) == 1 and list(spool.iterdir()) == []  # the file-first upload's spool had no name
        long_ago = time.time() - STALE_PART_SECS - 5
        os.utime(left[0], (long_ago, long_ago))
        fresh = files / ".file-another-process.part"
        fresh.write_bytes(b"an upload in progress elsewhere")
        async with ServerProcess(config, tmp_path):
            assert sorted(p.name for p in files.glob(".*.part")) == [fresh.name]
    assert "removed 1 unfinished upload(s)" in server.log_path.read_text()


async def _kill_mid_upload(server: ServerProcess, files: Path) -> None:
    """Start an upload, wait until its ``.part`` holds 2 MiB, kill -9 the server."""
    assert server.process is not None
    purpose_first = b'--killed\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
    upload = _start_upload(server.port, purpose_first, 3 * 1024 * 1024)
    await _wait_for(lambda: any(p.stat().st_size >= 2 * 1024 * 1024 for p in files.glob(".*.part")))
    os.kill(server.process.pid, signal.SIGKILL)
    await server.process.wait()
    upload.close()


async def test_a_part_file_left_by_kill_9_and_a_quick_restart_is_swept_while_the_server_runs(tmp_path: Path) -> None:
    """Restarted at once, the server cannot tell the leftover from a live upload of another process and keeps it; it
    is removed by a later sweep (every ``part_sweep_interval_secs``, 0.2 s here) once stale, as if minutes passed."""
    files = tmp_path / "files"
    async with FakeBackend() as backend:
        config = reference_config(tmp_path, backend)
        config["providers"]["files"][0]["config"]["part_sweep_interval_secs"] = 0.2
        first = ServerProcess(config, tmp_path)
        await first.start()
        await _kill_mid_upload(first, files)
        async with ServerProcess(config, tmp_path) as server:
            [left] = list(files.glob(".*.part"))
            fresh = files / ".file-another-process.part"
            fresh.write_bytes(b"an upload in progress elsewhere")
            await asyncio.sleep(0.5)  # sweeps ran: both are fresh
            assert sorted(p.name for p in files.glob(".*.part")) == sorted([left.name, fresh.name])
            long_ago = time.time() - STALE_PART_SECS - 5
            os.utime(left, (long_ago, long_ago))
            await _wait_for(lambda: not left.exists())
            await asyncio.sleep(0.5)
            assert [p.name for p in files.glob(".*.part")] == [fresh.name]
    assert "removed 1 unfinished upload(s)" in server.log_path.read_text()


_PLAIN_FILES = """
from llama_batches.api import Api, ExpiresAfter
from llama_batches.registry import ProviderKind, ProviderSpec
from llama_batches_localfs.config import LocalfsFilesImplConfig


class PlainFiles:
    \"\"\"inline::localfs behind a provider that knows nothing of late expiries (no accepts_late_expiry).\"\"\"

    def __init__(self, inner):
        self.inner = inner

    async def openai_upload_file(self, file, purpose, filename, expires_after=None):
        if expires_after is not None and type(expires_after) is not ExpiresAfter:
            raise TypeError(f"handed a {type(expires_after).__name__}")
        return await self.inner.openai_upload_file(file, purpose, filename, expires_after)

    async def openai_list_files(self, after=None, limit=10_000, order="desc", purpose=None):
        return await self.inner.openai_list_files(after, limit, order, purpose)

    async def openai_retrieve_file(self, file_id):
        return await self.inner.openai_retrieve_file(file_id)

    async def openai_retrieve_file_content(self, file_id):
        return await self.inner.openai_retrieve_file_content(file_id)

    async def openai_delete_file(self, file_id):
        return await self.inner.openai_delete_file(file_id)

    async def shutdown(self):
        await self.inner.shutdown()


async def get_provider_impl(config, deps):
    from llama_batches_localfs import get_provider_impl as localfs

    return PlainFiles(await localfs(config, deps))


PROVIDER_SPECS = [
    ProviderSpec(
        api=Api.files,
        kind=ProviderKind.inline,
        name="plain-files",
        config_class=LocalfsFilesImplConfig,
        module="plain_files_provider",
    )
]
"""


def _install_plain_files(directory: Path) -> dict[str, str]:
    """``inline::plain-files`` installed in ``directory`` as a distribution; the environment that finds it."""
    directory.mkdir()
    (directory / "plain_files_provider.py").write_text(textwrap.dedent(_PLAIN_FILES))
    info = directory / "plain_files_provider-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plain-files-provider\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[llama_batches.providers]\nplain = plain_files_provider:PROVIDER_SPECS\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(directory), *sys.path])}


Parts = list[tuple[str, Any, str | None]]
EXPIRY: Parts = [("expires_after[anchor]", "created_at", None), ("expires_after[seconds]", "7200", None)]
PURPOSE: Parts = [("purpose", "user_data", None)]
FILE: Parts = [("file", b"spooled until the expiry", "plain.txt")]
ORDERS: dict[str, Parts] = {
    "fields-first": PURPOSE + EXPIRY + FILE,
    "file-between": PURPOSE + FILE + EXPIRY,
    "split": PURPOSE + EXPIRY[1:] + FILE + EXPIRY[:1],
    "file-first": FILE + PURPOSE + EXPIRY,
}


async def _post_form(base_url: str, parts: list[tuple[str, Any, str | None]]) -> tuple[int, Any]:
    form = aiohttp.FormData()
    for name, value, filename in parts:
        form.add_field(name, value, **({} if filename is None else {"filename": filename}))
    async with aiohttp.ClientSession() as session, session.post(f"{base_url}/files", data=form) as answer:
        return answer.status, await answer.json()


async def test_a_files_provider_without_late_expiries_gets_the_file_spooled_with_its_expiry(tmp_path: Path) -> None:
    env = _install_plain_files(tmp_path / "site")
    async with FakeBackend() as backend:
        config = reference_config(tmp_path, backend)
        config["providers"]["files"][0]["provider_type"] = "inline::plain-files"
        async with ServerProcess(config, tmp_path, env=env) as server, async_client(server.base_url) as client:
            answers = {order: await _post_form(server.base_url, parts) for order, parts in ORDERS.items()}
            bad = [(n, "3599" if n == "expires_after[seconds]" else v, f) for n, v, f in ORDERS["file-between"]]
            bad_status, bad_body = await _post_form(server.base_url, bad)
            listed = [f async for f in client.files.list()]
    for order, (status, body) in answers.items():
        assert status == 200, (order, body)
        assert body["expires_at"] == body["created_at"] + 7200, order
    assert bad_status == 400 and assert_openai_error(bad_body, param="expires_after.seconds")
    assert sorted(f.id for f in listed) == sorted(body["id"] for _, body in answers.values())
    assert {(f.expires_at or 0) - f.created_at for f in listed} == {7200}
