"""``llama-batches import-llama-stack`` on a state written by llama-stack 0.7.3 itself, on SQLite and PostgreSQL.

The acceptance test runs the real ``llama stack run`` (inline::reference batches, inline::localfs files,
remote::openai inference on the fake backend over HTTP), drives it with the openai SDK, kills it (a batch still
running), imports (dry run, real, again), then serves the same run config with ``llama-batches serve`` and checks
every batch and file with the openai SDK: same ids, statuses, counts and bytes. SQLite runs with llama-stack's
``custom`` authentication (owners alice and bob), PostgreSQL without (everything ``anonymous``).

The other tests check the typed errors on hand-made llama-stack tables, without llama-stack.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import yaml
from aiohttp import web

from llama_batches.errors import ConfigError
from llama_batches.migrate import ImportOptions, Outcome, Unfinished, import_llama_stack, read_source

from .fake_backend import FakeBackend, Scripted
from .server_process import ServerProcess, free_port

MODEL = "openai/fake-model"
TOKENS = {"alice-token": ("alice", {"roles": ["admin"]}), "bob-token": ("bob", None)}


# llama-stack and its config -------------------------------------------------------------------------------------


def _backends(kind: str, state: Path, pg: dict[str, Any] | None) -> dict[str, Any]:
    if kind == "sqlite":
        return {
            "kv_default": {"type": "kv_sqlite", "db_path": str(state / "kvstore.db")},
            "sql_default": {"type": "sql_sqlite", "db_path": str(state / "sql_store.db")},
        }
    assert pg is not None
    common = {k: pg[k] for k in ("host", "port", "db", "user")}
    return {"kv_default": {"type": "kv_postgres", **common}, "sql_default": {"type": "sql_postgres", **common}}


def _config(directory: Path, backends: dict[str, Any], fake_url: str, auth_url: str | None) -> dict[str, Any]:
    state = directory / "state"
    server: dict[str, Any] = {"port": 8321}
    if auth_url is not None:
        server["auth"] = {"provider_config": {"type": "custom", "endpoint": auth_url}}
    return {
        "version": 2,
        "image_name": "import-test",
        "apis": ["batches", "files", "inference"],
        "providers": {
            "inference": [
                {
                    "provider_id": "openai",
                    "provider_type": "remote::openai",
                    "config": {"api_key": "t", "base_url": fake_url},
                }
            ],
            "files": [
                {
                    "provider_id": "localfs",
                    "provider_type": "inline::localfs",
                    "config": {
                        "storage_dir": str(state / "files"),
                        "metadata_store": {"backend": "sql_default", "table_name": "files_metadata"},
                    },
                }
            ],
            "batches": [
                {
                    "provider_id": "reference",
                    "provider_type": "inline::reference",
                    "config": {"kvstore": {"backend": "kv_default", "namespace": "batches"}},
                }
            ],
        },
        "storage": {
            "backends": backends,
            "stores": {
                "metadata": {"namespace": "registry", "backend": "kv_default"},
                "inference": {"table_name": "inference_store", "backend": "sql_default"},
                "conversations": {"table_name": "openai_conversations", "backend": "sql_default"},
                "prompts": {"namespace": "prompts", "backend": "kv_default"},
            },
        },
        "registered_resources": {"models": []},
        "server": server,
    }


@asynccontextmanager
async def _auth_endpoint() -> AsyncIterator[str]:
    """llama-stack's ``custom`` authentication endpoint, which llama-batches' server speaks too."""

    async def auth(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("api_key") not in TOKENS:
            return web.json_response({"message": "unknown token"}, status=401)
        principal, attributes = TOKENS[body["api_key"]]
        return web.json_response({"principal": principal, "attributes": attributes})

    app = web.Application()
    app.router.add_post("/auth", auth)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/auth"
    finally:
        await runner.cleanup()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


@asynccontextmanager
async def _llama_stack(bin_dir: Path, config_path: Path, log: Path) -> AsyncIterator[str]:
    """``llama stack run`` on a free port until the block ends, then SIGKILL (a crash: nothing is finished)."""
    port = free_port()
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            str(bin_dir / "llama"), "stack", "run", str(config_path), "--port", str(port), stdout=out, stderr=out
        )
    try:
        async with asyncio.timeout(120), aiohttp.ClientSession() as session:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"llama stack run exited: {_tail(log)}")
                try:
                    async with session.get(f"http://127.0.0.1:{port}/v1/health"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"not within {timeout} s: {what}")


def _lines(*contents: str) -> bytes:
    rows = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": c}]},
        }
        for i, c in enumerate(contents)
    ]
    return "\n".join(json.dumps(row) for row in rows).encode()


# driving llama-stack ----------------------------------------------------------------------------------------------


async def _batch(client: openai.AsyncOpenAI, data: bytes, until: tuple[str, ...], **create: Any) -> str:
    file = await client.files.create(file=("input.jsonl", data), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", **create
    )

    async def reached() -> bool:
        return (await client.batches.retrieve(batch.id)).status in until

    await _until(reached, f"batch {batch.id} reaches {until}")
    return batch.id


async def _drive(base_url: str) -> dict[str, list[str]]:
    """Files and batches of alice and bob; the batch ids per user (the last one of bob's is left running)."""
    alice = openai.AsyncOpenAI(base_url=base_url, api_key="alice-token", max_retries=0)
    bob = openai.AsyncOpenAI(base_url=base_url, api_key="bob-token", max_retries=0)
    await alice.files.create(file=("notes.txt", b"not a batch input\n"), purpose="assistants")
    keyed = await _batch(
        alice,
        _lines("one", "two", "fail please", "three"),
        ("completed",),
        metadata={"team": "a"},
        extra_body={"idempotency_key": "key-A"},
    )
    invalid = await _batch(alice, _lines("x").replace(MODEL.encode(), b"openai/nope"), ("failed",))
    cancelled = await _batch(alice, _lines("slow 1", "fine"), ("in_progress",))
    await alice.batches.cancel(cancelled)
    await _until(lambda: _status_is(alice, cancelled, "cancelled"), "the cancel ends")
    plain = await _batch(bob, _lines("b1", "b2"), ("completed",))
    running = await _batch(bob, _lines("b3", "slow 2", "b4"), ("in_progress",))
    await alice.close()
    await bob.close()
    return {"alice": [keyed, invalid, cancelled], "bob": [plain, running]}


async def _status_is(client: openai.AsyncOpenAI, batch_id: str, status: str) -> bool:
    return (await client.batches.retrieve(batch_id)).status == status


async def _snapshot(base_url: str) -> dict[str, Any]:
    """Every batch and file each user sees, with the files' bytes."""
    found: dict[str, Any] = {}
    for token, (user, _) in TOKENS.items():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=token, max_retries=0) as client:
            batches = {b.id: b.model_dump() async for b in client.batches.list(limit=100)}
            files = {f.id: f.model_dump() async for f in client.files.list()}
            content = {file_id: (await client.files.content(file_id)).read() for file_id in files}
        found[user] = {"batches": batches, "files": files, "content": content}
    return found


# the import command -------------------------------------------------------------------------------------------------


async def _import(config: Path, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llama_batches.cli",
        "import-llama-stack",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


# the acceptance test ------------------------------------------------------------------------------------------------


@asynccontextmanager
async def _database(base: dict[str, Any] | None) -> AsyncIterator[dict[str, Any] | None]:
    """None for SQLite (``base`` None); for PostgreSQL, a database of its own on the server of ``base`` (the
    ``postgres`` fixture's), dropped afterwards."""
    if base is None:
        yield None
        return
    import asyncpg

    name = f"llama_batches_import_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(host=base["host"], port=base["port"], user=base["user"], database=base["db"])
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        yield {**base, "db": name}
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


def _slow_or_failing(slow: dict[str, bool]) -> Callable[[str, Any, int], Scripted | None]:
    def script(path: str, body: Any, attempt: int) -> Scripted | None:
        content = str(body["messages"][-1]["content"]) if isinstance(body, dict) and body.get("messages") else ""
        if content.startswith("slow") and slow["on"]:
            return Scripted(delay_s=60.0, body=b"{}")
        if content == "fail please":
            error = {"message": "scripted failure", "type": "invalid_request_error", "param": None, "code": None}
            return Scripted(status=400, body=orjson.dumps({"error": error}))
        return None

    return script


async def _scenario(llama_stack_bin: Path, directory: Path, postgres: dict[str, Any] | None) -> None:
    kind, slow = "sqlite" if postgres is None else "postgres", {"on": True}
    async with FakeBackend() as backend, _auth_endpoint() as auth_url, _database(postgres) as pg:
        backend.script = _slow_or_failing(slow)
        authenticated = pg is None
        backends = _backends(kind, directory / "state", pg)
        config = _config(directory, backends, backend.base_url, auth_url if authenticated else None)
        config_path = directory / "run.yaml"
        config_path.write_text(yaml.safe_dump(config))
        async with _llama_stack(llama_stack_bin, config_path, directory / "llama-stack.log") as url:
            ids = await _drive(url)
            before = await _snapshot(url)
        keyed = before["alice"]["batches"][ids["alice"][0]]
        assert keyed["request_counts"] == {"total": 4, "completed": 3, "failed": 1}  # an output and an error file
        slow["on"] = False
        owners = {user: user if authenticated else "anonymous" for user in ids}
        await _check_import_runs(config_path, ids, before, owners)
        async with ServerProcess(config, directory) as server:  # the same run.yaml
            await _check_served(server.base_url, ids, before, authenticated=authenticated)


async def test_a_sqlite_deployment_with_owners_is_served_after_import(llama_stack_bin: Path, tmp_path: Path) -> None:
    await _scenario(llama_stack_bin, tmp_path, None)


@pytest.mark.postgres
async def test_a_postgres_deployment_is_served_after_import(
    llama_stack_bin: Path, tmp_path: Path, postgres: dict[str, Any]
) -> None:
    await _scenario(llama_stack_bin, tmp_path, postgres)


FILE_FIELDS = ("id", "bytes", "created_at", "expires_at", "filename", "purpose")


async def _check_import_runs(
    config: Path, ids: dict[str, list[str]], before: dict[str, Any], owners: dict[str, str]
) -> None:
    files = {file_id for seen in before.values() for file_id in seen["files"]}
    batches = {batch_id for seen in before.values() for batch_id in seen["batches"]}
    assert len(files) == 10 and batches == {i for user_ids in ids.values() for i in user_ids}

    code, out = await _import(config, "--dry-run", "-v")
    assert code == 0, out
    assert f"dry run: would import {len(files)} files and {len(batches)} batches; nothing was changed" in out
    for user, user_ids in ids.items():
        for batch_id in user_ids:
            assert f"batch {batch_id}  owner={owners[user]}  would import" in out, out
    assert f"batch {ids['bob'][-1]}  owner={owners['bob']}  would import  (in_progress -> validating" in out

    code, out = await _import(config)
    assert code == 0, out
    assert f"imported {len(files)} files and {len(batches)} batches" in out  # the dry run imported nothing

    code, out = await _import(config)
    assert code == 0, out
    assert "nothing new to import" in out
    assert f"files: {len(files)} found, 0 imported, {len(files)} already imported, 0 failed" in out
    assert f"batches: {len(batches)} found, 0 imported, {len(batches)} already imported, 0 failed" in out


async def _check_served(
    base_url: str, ids: dict[str, list[str]], before: dict[str, Any], *, authenticated: bool
) -> None:
    running, keyed = ids["bob"][-1], ids["alice"][0]
    everyone = sorted(i for user_ids in ids.values() for i in user_ids)
    for token, (user, _) in TOKENS.items():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=token, max_retries=0) as client:
            theirs = sorted(ids[user]) if authenticated else everyone
            assert sorted([b.id async for b in client.batches.list(limit=100)]) == theirs
            for batch_id in set(theirs) - {running}:
                assert (await client.batches.retrieve(batch_id)).model_dump() == before[user]["batches"][batch_id]
            for file_id, meta in before[user]["files"].items():
                served = (await client.files.retrieve(file_id)).model_dump()
                assert {k: served[k] for k in FILE_FIELDS} == {k: meta[k] for k in FILE_FIELDS}
                assert (await client.files.content(file_id)).read() == before[user]["content"][file_id]
            if authenticated and user == "alice":
                with pytest.raises(openai.NotFoundError):
                    await client.batches.retrieve(running)
    async with openai.AsyncOpenAI(base_url=base_url, api_key="bob-token", max_retries=0) as bob:
        await _until(lambda: _status_is(bob, running, "completed"), "the unfinished batch runs again", timeout=60)
        resumed = await bob.batches.retrieve(running)
        assert resumed.request_counts is not None and resumed.request_counts.model_dump() == {
            "total": 3,
            "completed": 3,
            "failed": 0,
        }
        assert resumed.output_file_id is not None
        output = (await bob.files.content(resumed.output_file_id)).read().decode()
        assert sorted(json.loads(line)["custom_id"] for line in output.splitlines()) == ["c0", "c1", "c2"]
    async with openai.AsyncOpenAI(base_url=base_url, api_key="alice-token", max_retries=0) as alice:
        original = await alice.batches.retrieve(keyed)
        replay = await alice.batches.create(
            input_file_id=original.input_file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"team": "a"},
            extra_body={"idempotency_key": "key-A"},
        )
        assert replay.id != keyed  # llama-stack's key is not known: a replayed key makes a new batch (documented)


# typed errors and decisions, on tables laid out as llama-stack 0.7.3 lays them out ------------------------------------


def _legacy_state(directory: Path, *, files_table: str = "files_metadata") -> Path:
    """A llama-stack SQLite state by hand: carol's input file, a file whose content is gone, a batch left running."""
    state = directory / "state"
    (state / "files").mkdir(parents=True)
    (state / "files" / "file-aa").write_bytes(b'{"custom_id": "c0"}\n')
    with sqlite3.connect(state / "sql_store.db") as sql:
        sql.execute(
            "CREATE TABLE openai_files (id VARCHAR PRIMARY KEY, filename VARCHAR, purpose VARCHAR, bytes INTEGER, "
            "created_at INTEGER, expires_at INTEGER, file_path VARCHAR, access_attributes JSON, "
            "owner_principal VARCHAR)"
        )
        rows = [
            (
                "file-aa",
                "in.jsonl",
                "batch",
                20,
                1,
                None,
                str(state / "files" / "file-aa"),
                '{"roles": ["x"]}',
                "carol",
            ),
            ("file-bb", "gone.jsonl", "batch", 5, 2, None, str(state / "files" / "file-bb"), "null", ""),
        ]
        sql.executemany("INSERT INTO openai_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    batch = {
        "id": "batch_0123456789abcdef",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-aa",
        "completion_window": "24h",
        "status": "in_progress",
        "created_at": 10,
        "in_progress_at": 11,
        "request_counts": {"total": 1, "completed": 0, "failed": 0},
    }
    with sqlite3.connect(state / "kvstore.db") as kv:
        kv.execute("CREATE TABLE kvstore (key TEXT PRIMARY KEY, value TEXT, expiration TIMESTAMP)")
        kv.execute("INSERT INTO kvstore VALUES (?, ?, NULL)", (f"batch:{batch['id']}", json.dumps(batch)))
        kv.execute("INSERT INTO kvstore VALUES ('distributions:registry:v10::model:x', '{}', NULL)")
    config = _config(directory, _backends("sqlite", state, None), "http://127.0.0.1:9/v1", None)
    config["providers"]["files"][0]["config"]["metadata_store"]["table_name"] = files_table
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_missing_content_fails_that_file_and_unfinished_batches_can_be_failed(tmp_path: Path) -> None:
    from llama_batches.stack import build_stack

    config = _legacy_state(tmp_path)
    results: list[Any] = []
    options = ImportOptions(source=config, default_owner="dave", unfinished=Unfinished.fail)
    report = await import_llama_stack(options, on_item=results.append)
    assert report.count("file", Outcome.imported) == 1 and report.count("batch", Outcome.imported) == 1
    [missing] = report.failures
    assert missing.id == "file-bb" and missing.owner == "dave"
    assert str(tmp_path / "state" / "files" / "file-bb") in missing.detail and "missing" in missing.detail
    [batch] = [r for r in results if r.kind == "batch"]
    assert batch.owner == "carol"  # the owner of its input file: llama-stack's batches have none
    async with build_stack(config) as stack, stack.as_principal("carol"):
        stored = await stack.batches.retrieve_batch("batch_0123456789abcdef")
        assert (await stack.files.openai_retrieve_file("file-aa")).bytes == 20
    assert stored.status == "failed" and stored.errors is not None and stored.errors.data is not None
    assert stored.errors.data[0].code == "import_unfinished"


def test_a_config_without_a_batches_kvstore_says_where(tmp_path: Path) -> None:
    config = yaml.safe_load(_legacy_state(tmp_path).read_text())
    del config["providers"]["batches"][0]["config"]["kvstore"]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        read_source(tmp_path / "run.yaml")
    assert caught.value.path == "providers.batches[0].config.kvstore"
    assert "inline::reference keeps its batches there" in caught.value.message


async def test_tables_named_like_llama_stack_ones_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    config = _legacy_state(tmp_path, files_table="openai_files")
    with pytest.raises(ConfigError) as caught:
        await import_llama_stack(ImportOptions(source=config))
    assert caught.value.path == "providers.files[0].config.metadata_store.table_name"
    assert "llama-stack's own table 'openai_files'" in caught.value.message
    with sqlite3.connect(tmp_path / "state" / "kvstore.db") as kv:
        assert [t for (t,) in kv.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["kvstore"]
