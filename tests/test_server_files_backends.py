"""``/v1/files`` on a live server, once with its metadata on SQLite and once on PostgreSQL: ids and cursors no file
can have are answered before any query (a NUL is a 404 or an empty page on both backends, never a 500), and a
download that races a delete is either the whole file or a clean 404.

And, on SQLite (no store involved): the ``.part`` file a ``kill -9`` leaves mid-upload is swept when the files
provider starts again, while a fresh one (another process's upload) is kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
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
