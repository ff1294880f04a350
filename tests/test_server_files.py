"""``/v1/files`` on a live ``llama-batches serve`` through the real openai SDK and hand-built multipart bodies: the
round trip, expiry (wherever ``expires_after`` sits in the form), the checks of a batch upload (OpenAI's: the first
line; a UTF-8 byte order mark dropped), clean file names, and the uploads the server refuses (not JSONL, too large,
purpose ``batch_output``) without keeping anything.

One server for the module; its files provider accepts at most ``MAX_FILE_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from llama_batches.server.jsonl import BOM

from .conformance.batches import chat_line, jsonl
from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config
from .test_server import (
    CHAT,
    Live,
    RequestLog,
    assert_openai_error,
    async_client,
    in_thread,
    sdk_error,
    sync_client,
    wait_batch,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_FILE_BYTES = 1024 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    directory = tmp_path_factory.mktemp("files-server")
    async with FakeBackend() as backend:
        config = reference_config(directory, backend)
        config["providers"]["files"][0]["config"]["max_file_size_bytes"] = MAX_FILE_BYTES
        async with ServerProcess(config, directory) as server:
            yield Live(server, backend, directory)


def stored_files(live: Live) -> list[Path]:
    """Every file under the files provider's storage directory."""
    root = live.directory / "files"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def all_file_ids(client: openai.AsyncOpenAI) -> list[str]:
    return [f.id async for f in client.files.list()]


async def multipart(live: Live, parts: list[tuple[str, Any, str | None]]) -> tuple[int, Any]:
    """POST /v1/files with the form ``parts`` (name, value, filename) in exactly this order."""
    form = aiohttp.FormData()
    for name, value, filename in parts:
        if filename is None:
            form.add_field(name, value)
        else:
            form.add_field(name, value, filename=filename, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as session, session.post(f"{live.base_url}/files", data=form) as answer:
        return answer.status, await answer.json()


# 6. round trip ------------------------------------------------------------------------------------------------


async def test_a_user_data_file_round_trips_through_the_sync_sdk(live: Live) -> None:
    data = os.urandom(200_000) + b"\x00\xff not utf-8 \xfe"
    with sync_client(live.base_url) as client:
        created = await in_thread(client.files.create, file=("blob.bin", data), purpose="user_data")
        listed_user_data = await in_thread(lambda: list(client.files.list(purpose="user_data")))
        listed_batch = await in_thread(lambda: list(client.files.list(purpose="batch")))
        retrieved = await in_thread(client.files.retrieve, created.id)
        content = (await in_thread(client.files.content, created.id)).content
        deleted = await in_thread(client.files.delete, created.id)
        with pytest.raises(openai.NotFoundError) as gone:
            await in_thread(client.files.retrieve, created.id)
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.files.content, created.id)
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.files.delete, created.id)
    assert created.object == "file" and created.id.startswith("file-")
    assert (created.purpose, created.bytes, created.filename) == ("user_data", len(data), "blob.bin")
    assert created.id in [f.id for f in listed_user_data]
    assert all(f.purpose == "user_data" for f in listed_user_data)
    assert created.id not in [f.id for f in listed_batch]
    assert retrieved.model_dump() == created.model_dump()
    assert content == data
    assert (deleted.id, deleted.deleted, deleted.object) == (created.id, True, "file")
    sdk_error(gone.value)


async def test_files_list_in_both_orders(live: Live) -> None:
    async with async_client(live.base_url) as client:
        made = [
            (await client.files.create(file=(f"order-{i}.txt", b"x" * (i + 1)), purpose="user_data")).id
            for i in range(3)
        ]
        ascending = [f async for f in client.files.list(order="asc", purpose="user_data")]
        descending = [f async for f in client.files.list(order="desc", purpose="user_data")]
        page = await client.files.list(order="asc", purpose="user_data", limit=2)
    asc_ids = [f.id for f in ascending]
    assert [i for i in asc_ids if i in made] == made
    assert [f.id for f in descending] == asc_ids[::-1]
    assert [f.created_at for f in ascending] == sorted(f.created_at for f in ascending)
    assert [f.id for f in page.data] == asc_ids[:2] and page.has_more == (len(asc_ids) > 2)


async def test_expires_after_sets_expires_at(live: Live) -> None:
    async with async_client(live.base_url) as client:
        created = await client.files.create(
            file=("expiring.txt", b"soon gone"),
            purpose="user_data",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )
        retrieved = await client.files.retrieve(created.id)
    assert created.expires_at == created.created_at + 3600
    assert retrieved.expires_at == created.expires_at


# 7. refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n", b"not json\n", b'[1, 2, 3]\n{"custom_id": "a"}\n', b'"a string"', BOM, BOM + b"\n[]"],
    ids=["empty", "blank-lines", "not-json", "array-first", "string", "bom-only", "bom-then-array"],
)
async def test_a_batch_upload_that_is_not_jsonl_is_a_400_mentioning_jsonl(live: Live, content: bytes) -> None:
    async with async_client(live.base_url) as client:
        before = await all_file_ids(client)
        with pytest.raises(openai.BadRequestError) as caught:
            await client.files.create(file=("input.jsonl", content), purpose="batch")
        after = await all_file_ids(client)
    error = sdk_error(caught.value, param="file")
    assert error["message"].startswith("Invalid file format for Batch API. Must be .jsonl")
    assert after == before


async def test_an_upload_over_the_size_limit_is_a_413_and_nothing_is_kept(live: Live) -> None:
    data = os.urandom(3 * MAX_FILE_BYTES)
    log = RequestLog()
    async with async_client(live.base_url, log) as client:
        before, on_disk = await all_file_ids(client), stored_files(live)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.files.create(file=("big.bin", data), purpose="user_data")
        after = await all_file_ids(client)
        # a file just under the limit is fine
        small = await client.files.create(file=("small.bin", data[: MAX_FILE_BYTES - 10]), purpose="user_data")
        await client.files.delete(small.id)
    assert caught.value.status_code == 413
    assert log.count("POST", "/v1/files") == 2  # the refused upload was answered, not retried; then the small one
    error = sdk_error(caught.value, param="file")
    assert error["type"] == "invalid_request_error"
    assert after == before
    assert stored_files(live) == on_disk


async def test_a_batch_upload_over_the_size_limit_is_a_413(live: Live) -> None:
    lines = jsonl([chat_line(i, content="y" * 1000) for i in range(2 * MAX_FILE_BYTES // 1000)])
    assert len(lines) > MAX_FILE_BYTES
    with sync_client(live.base_url) as client:
        before = await in_thread(lambda: [f.id for f in client.files.list()])
        with pytest.raises(openai.APIStatusError) as caught:
            await in_thread(client.files.create, file=("big.jsonl", lines), purpose="batch")
        after = await in_thread(lambda: [f.id for f in client.files.list()])
    assert caught.value.status_code == 413
    assert after == before


async def test_purpose_after_the_file_part_still_works(live: Live) -> None:
    lines = jsonl([chat_line(i, content=f"purpose-after {i}") for i in range(3)])
    status, body = await multipart(live, [("file", lines, "late.jsonl"), ("purpose", "batch", None)])
    assert status == 200, body
    assert (body["purpose"], body["bytes"], body["filename"]) == ("batch", len(lines), "late.jsonl")
    async with async_client(live.base_url) as client:
        assert (await client.files.content(body["id"])).content == lines
        batch = await client.batches.create(input_file_id=body["id"], endpoint=CHAT, completion_window="24h")
        done = await wait_batch(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 3


async def test_purpose_and_expiry_after_the_file_part_for_user_data(live: Live) -> None:
    status, body = await multipart(
        live,
        [
            ("file", b"late fields", "late.txt"),
            ("purpose", "user_data", None),
            ("expires_after[anchor]", "created_at", None),
            ("expires_after[seconds]", "7200", None),
        ],
    )
    assert status == 200, body
    assert body["purpose"] == "user_data" and body["expires_at"] == body["created_at"] + 7200


async def test_a_late_purpose_batch_still_checks_jsonl(live: Live) -> None:
    async with async_client(live.base_url) as client:
        before = await all_file_ids(client)
        status, body = await multipart(live, [("file", b"not json\n", "late.jsonl"), ("purpose", "batch", None)])
        assert await all_file_ids(client) == before
    assert status == 400
    assert ".jsonl" in assert_openai_error(body, param="file")["message"]


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ([("file", b"data", "a.txt")], "purpose"),
        ([("purpose", "nonsense", None), ("file", b"data", "a.txt")], "purpose"),
        ([("purpose", "user_data", None)], "file"),
        ([("purpose", "user_data", None), ("expires_after[seconds]", "60", None), ("file", b"d", "a.txt")], None),
    ],
    ids=["no-purpose", "bad-purpose", "no-file", "expiry-too-short"],
)
async def test_a_bad_upload_form_is_a_400_naming_the_field(
    live: Live, parts: list[tuple[str, Any, str | None]], param: str | None
) -> None:
    async with async_client(live.base_url) as client:
        before = await all_file_ids(client)
        status, body = await multipart(live, parts)
        assert await all_file_ids(client) == before
    assert status == 400, body
    error = assert_openai_error(body)
    if param is not None:
        assert error["param"] == param
    else:
        assert error["param"] is not None and "expires_after" in error["param"]


async def test_an_upload_that_is_not_multipart_is_a_400(live: Live) -> None:
    async with aiohttp.ClientSession() as session, session.post(f"{live.base_url}/files", json={"a": 1}) as answer:
        status, body = answer.status, await answer.json()
    assert status == 400
    assert_openai_error(body, param="file")


# server errors found by schemathesis (test_server_schema), pinned here with exact requests ---------------------


async def test_an_upload_with_purpose_evals_is_not_a_server_error_and_leaves_no_orphan(live: Live) -> None:
    """``evals`` is one of OpenAI's upload purposes (and in the server's schema enum)."""
    async with async_client(live.base_url) as client:
        no_retry = client.with_options(max_retries=0)
        before, on_disk = await all_file_ids(client), stored_files(live)
        try:
            created = await no_retry.files.create(file=("eval.jsonl", b'{"item": 1}\n'), purpose="evals")
        except openai.APIStatusError as exc:
            status, body = exc.status_code, exc.response.json()
        else:
            status, body = 200, created.model_dump()
        after = await all_file_ids(client)
    leftovers = [p.name for p in stored_files(live) if p not in on_disk]
    assert status < 500, f"POST /v1/files purpose=evals answered {status}: {body}; left on disk: {leftovers}"
    if status == 200:
        assert body["purpose"] == "evals" and [i for i in after if i not in before] == [body["id"]]
    else:
        assert status == 400 and assert_openai_error(body, param="purpose")
        assert after == before and not leftovers, f"refused upload left {leftovers} on disk"


async def test_a_malformed_multipart_body_is_a_400_not_a_500(live: Live) -> None:
    boundary = "2eeee80e2bcb303cb3f45baa15093b74"
    body = f"--{boundary}\r\n5.61020783214989e+16--{boundary}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{live.base_url}/files", data=body, headers=headers) as answer,
    ):
        status, text = answer.status, await answer.text()
    assert status == 400, f"a malformed multipart body answered {status}: {text}"
    assert_openai_error(json.loads(text))


# issue 11: fidelity at the edges -------------------------------------------------------------------------------


async def test_only_the_first_line_is_checked_at_upload_later_lines_fail_the_batch_with_their_number(
    live: Live,
) -> None:
    """llama-stack's malformed-JSONL case: the upload succeeds, the batch fails with ``invalid_json_line`` at 2."""
    content = jsonl([chat_line(0, content="first-line ok")]) + b"{not json\n" + jsonl([chat_line(2)])
    async with async_client(live.base_url) as client:
        uploaded = await client.files.create(file=("mixed.jsonl", content), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        done = await wait_batch(client, batch.id)
        stored = (await client.files.content(uploaded.id)).content
    assert stored == content
    assert done.status == "failed" and done.errors is not None and done.errors.data is not None
    assert [(e.line, e.code) for e in done.errors.data] == [(2, "invalid_json_line")]


async def test_a_utf8_bom_is_dropped_from_a_batch_file_and_kept_in_other_files(live: Live) -> None:
    lines = jsonl([chat_line(i, content=f"bom {i}") for i in range(2)])
    async with async_client(live.base_url) as client:
        uploaded = await client.files.create(file=("bom.jsonl", BOM + lines), purpose="batch")
        stored = (await client.files.content(uploaded.id)).content
        other = await client.files.create(file=("bom.txt", BOM + b"text"), purpose="user_data")
        other_stored = (await client.files.content(other.id)).content
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
        done = await wait_batch(client, batch.id)
    assert (stored, uploaded.bytes) == (lines, len(lines))
    assert (other_stored, other.bytes) == (BOM + b"text", len(BOM) + 4)
    assert done.status == "completed" and done.request_counts is not None and done.request_counts.completed == 2


@pytest.mark.parametrize("late", [False, True], ids=["purpose-first", "purpose-after-file"])
async def test_an_upload_with_purpose_batch_output_is_a_400_and_nothing_is_kept(live: Live, late: bool) -> None:
    """Only the server writes ``batch_output`` files (a batch's results)."""
    parts: list[tuple[str, Any, str | None]] = [("purpose", "batch_output", None), ("file", b'{"a": 1}\n', "o.jsonl")]
    async with async_client(live.base_url) as client:
        before, on_disk = await all_file_ids(client), stored_files(live)
        status, body = await multipart(live, parts[::-1] if late else parts)
        after = await all_file_ids(client)
    assert status == 400, body
    error = assert_openai_error(body, param="purpose")
    assert error["code"] == "invalid_value" and "batch_output" in error["message"]
    assert after == before and stored_files(live) == on_disk


EXPIRY_CASES: list[tuple[dict[str, str], str | None]] = [
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"}, None),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}, None),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592000"}, None),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "garbage"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200.0"}, "expires_after.seconds"),
    ({"expires_after[anchor]": "created_at", "expires_after[seconds]": ""}, "expires_after.seconds"),
    ({"expires_after[anchor]": "updated_at", "expires_after[seconds]": "7200"}, "expires_after.anchor"),
    ({"expires_after[seconds]": "7200"}, "expires_after.anchor"),
    ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
    # the other order of the fields: with order "split", seconds before the file and the anchor after it
    ({"expires_after[seconds]": "7200", "expires_after[anchor]": "created_at"}, None),
    ({"expires_after[seconds]": "3599", "expires_after[anchor]": "created_at"}, "expires_after.seconds"),
    ({"expires_after[seconds]": "7200", "expires_after[anchor]": "updated_at"}, "expires_after.anchor"),
]


@pytest.mark.parametrize("order", ["fields-first", "file-between", "file-first", "split"])
@pytest.mark.parametrize(("fields", "param"), EXPIRY_CASES, ids=[f"case{i}" for i in range(len(EXPIRY_CASES))])
async def test_expires_after_is_read_and_checked_wherever_it_sits_in_the_form(
    live: Live, order: str, fields: dict[str, str], param: str | None
) -> None:
    """Before the file, after it (purpose first: the file is already streaming to the provider), everything after
    the file (spooled), or split around it (the first field before, the second after: checked once both are read):
    a valid expiry always sets ``expires_at``, an invalid one is a 400 naming the field."""
    expiry: list[tuple[str, Any, str | None]] = [(name, value, None) for name, value in fields.items()]
    purpose: list[tuple[str, Any, str | None]] = [("purpose", "user_data", None)]
    file: list[tuple[str, Any, str | None]] = [("file", b"expiring content", "e.txt")]
    parts = {
        "fields-first": purpose + expiry + file,
        "file-between": purpose + file + expiry,
        "file-first": file + purpose + expiry,
        "split": purpose + expiry[:1] + file + expiry[1:],
    }[order]
    async with async_client(live.base_url) as client:
        before, on_disk = await all_file_ids(client), stored_files(live)
        status, body = await multipart(live, parts)
        after = await all_file_ids(client)
        if status == 200:
            retrieved = await client.files.retrieve(body["id"])
            content = (await client.files.content(body["id"])).content
            await client.files.delete(body["id"])
    if param is None:
        assert status == 200, body
        seconds = int(fields["expires_after[seconds]"])
        assert body["expires_at"] == body["created_at"] + seconds and retrieved.expires_at == body["expires_at"]
        assert content == b"expiring content" and [i for i in after if i not in before] == [body["id"]]
    else:
        assert status == 400, body
        assert_openai_error(body, param=param)
        assert after == before and stored_files(live) == on_disk


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("invoice\u202egnp.exe", "invoicegnp.exe"),
        ("a\u2066b\u2067c\u2068d\u2069e.txt", "abcde.txt"),
        ("\u200eleft\u200fright\u061c.txt", "leftright.txt"),
        ("c1\u0085\u009bcontrols.txt", "c1controls.txt"),
        ("../../etc/pass\u202dwd", "passwd"),
        ("emoji \U0001f600 and ü.txt", "emoji \U0001f600 and ü.txt"),
    ],
    ids=["rlo", "isolates", "marks", "c1", "path-and-lro", "plain-unicode"],
)
async def test_file_names_lose_control_and_bidi_characters(live: Live, sent: str, kept: str) -> None:
    async with async_client(live.base_url) as client:
        created = await client.files.create(file=(sent, b"name test"), purpose="user_data")
        listed = [f.filename async for f in client.files.list(purpose="user_data") if f.id == created.id]
        await client.files.delete(created.id)
    assert created.filename == kept and listed == [kept]


async def test_each_form_field_counts_once(live: Live) -> None:
    async with async_client(live.base_url) as client:
        before = await all_file_ids(client)
        twice = [("purpose", "user_data", None), ("purpose", "batch", None), ("file", b"x", "a.txt")]
        two_files = [("purpose", "user_data", None), ("file", b"x", "a.txt"), ("file", b"y", "b.txt")]
        answers = [await multipart(live, twice), await multipart(live, two_files)]
        assert await all_file_ids(client) == before
    for (status, body), param in zip(answers, ["purpose", "file"], strict=True):
        assert status == 400, body
        assert assert_openai_error(body, param=param)["code"] == "duplicate_parameter"


async def _list_and_delete(live: Live, filename: str, stop: asyncio.Event, seen: dict[str, int]) -> None:
    """List the files named ``filename`` as fast as possible, record each one's lifetime, delete it."""
    async with async_client(live.base_url) as client:
        while not stop.is_set():
            for listed in [f async for f in client.files.list(purpose="user_data") if f.filename == filename]:
                seen[listed.id] = (listed.expires_at or 0) - listed.created_at
                with contextlib.suppress(openai.NotFoundError):  # the other lister was first
                    await client.files.delete(listed.id)


async def test_a_late_expiry_races_no_concurrent_list_or_delete(live: Live) -> None:
    """Uploads whose ``expires_after`` follows the file part (purpose first, so the file streams to the provider
    before the expiry is read) while two clients list and delete them as fast as they can: every upload answers 200
    with the expiry it asked for, and no file is ever listed with another expiry (one stored, then stored again with
    the expiry and the first copy deleted, would show it and answer 404 once that copy is deleted under it)."""
    filename = f"race-{os.urandom(4).hex()}.bin"
    parts: list[tuple[str, Any, str | None]] = [
        ("purpose", "user_data", None),
        ("file", os.urandom(256 * 1024), filename),
        ("expires_after[anchor]", "created_at", None),
        ("expires_after[seconds]", "7200", None),
    ]
    stop, seen = asyncio.Event(), dict[str, int]()
    listers = [asyncio.create_task(_list_and_delete(live, filename, stop, seen)) for _ in range(2)]
    try:
        answers = [a for _ in range(6) for a in await asyncio.gather(*(multipart(live, parts) for _ in range(5)))]
        await asyncio.sleep(0.2)  # the last uploads are listed (and deleted) too
    finally:
        stop.set()
        await asyncio.gather(*listers)
    async with async_client(live.base_url) as client:
        left = [f async for f in client.files.list(purpose="user_data") if f.filename == filename]
        for file in left:
            await client.files.delete(file.id)
    assert [status for status, _ in answers] == [200] * len(answers), [b for s, b in answers if s != 200]
    ids = {body["id"] for _, body in answers}
    assert len(ids) == len(answers) and {body["expires_at"] - body["created_at"] for _, body in answers} == {7200}
    assert seen and set(seen.values()) == {7200}, seen
    assert {(f.expires_at or 0) - f.created_at for f in left} <= {7200}
    assert set(seen) | {f.id for f in left} == ids  # no file but those the uploads answered with
    assert not [p.name for p in stored_files(live) if p.name in ids or p.name.endswith(".part")]
