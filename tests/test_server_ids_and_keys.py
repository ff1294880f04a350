"""Ids, cursors, limits, unstorable strings and the ``Idempotency-Key`` header at the HTTP edge, against a real
``llama-batches serve`` on SQLite and on PostgreSQL.

- An id no backend can have issued (a NUL, a lone surrogate, not ``batch_`` + ``[A-Za-z0-9_-]``, too long) is the
  same 404 as an unknown id, on retrieve and cancel; such a cursor is the same empty page as an unknown cursor.
- ``limit`` outside 1..100 is a 400 naming ``limit``.
- A create body string that a store cannot hold (NUL, lone surrogate) is a 400 naming the field, and nothing is made.
- ``Idempotency-Key`` is an RFC 8941 string or a bare key, ASCII only: the same key by header (quoted, escaped, with
  parameters, bare) and by body gives the same batch; a non-ASCII header (UTF-8 or latin-1 bytes, sent on a raw
  socket since HTTP clients refuse them) is a 400 saying so, and makes nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from llama_batches.errors import InvalidRequestError
from llama_batches.server.idempotency import parse_header

from .conformance.batches import chat_line, jsonl
from .conftest import postgres_backend
from .fake_backend import FakeBackend
from .server_process import ServerProcess
from .test_provider_reference import reference_config
from .test_server import Live, assert_openai_error, async_client, raw

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT = "/v1/chat/completions"


@dataclass
class Served:
    live: Live
    file_id: str

    def body(self, **extra: Any) -> dict[str, Any]:
        return {"input_file_id": self.file_id, "endpoint": CHAT, "completion_window": "24h", **extra}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """The ``sql_default`` backend: None for the SQLite default, else the ``postgres`` fixture's database (resolved
    here, outside the event loop, since it creates the database with ``asyncio.run``)."""
    return postgres_backend(request.getfixturevalue("postgres")) if request.param == "postgres" else None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(storage: dict[str, Any] | None, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    directory: Path = tmp_path_factory.mktemp("edges")
    async with FakeBackend() as backend:
        config = reference_config(directory, backend)
        if storage is not None:
            config["storage"]["backends"]["sql_default"] = storage
            config["providers"]["batches"][0]["config"]["kvstore"]["namespace"] = "edges"
            config["providers"]["files"][0]["config"]["metadata_store"]["table_name"] = "edges_files"
        async with ServerProcess(config, directory) as server:
            live = Live(server, backend, directory)
            async with async_client(live.base_url) as client:
                uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
            yield Served(live, uploaded.id)


async def send(live: Live, head: list[bytes], body: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """``POST /v1/batches`` on a raw socket, with header lines sent byte for byte."""
    stream_reader, writer = await asyncio.open_connection("127.0.0.1", live.server.port)
    lines = [b"POST /v1/batches HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", b"Content-Type: application/json"]
    lines += [b"Content-Length: " + str(len(body)).encode(), *head]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    async with asyncio.timeout(30):
        answer = await stream_reader.read()
    writer.close()
    header_block, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *fields = header_block.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (f.partition(":") for f in fields)}
    assert "chunked" not in headers.get("transfer-encoding", ""), headers
    return int(status_line.split()[1]), headers, json.loads(payload)


async def create(served: Served, key_header: bytes | None = None, **extra: Any) -> tuple[int, dict[str, str], Any]:
    head = [b"Idempotency-Key: " + key_header] if key_header is not None else []
    return await send(served.live, head, json.dumps(served.body(**extra)).encode())


async def batch_count(served: Served) -> int:
    status, _, page = await raw(served.live, "GET", "/batches", params={"limit": "100"})
    assert status == 200, page
    return len(page["data"])


# ids, cursors and limit -----------------------------------------------------------------------------------------

IMPOSSIBLE_IDS = [
    "batch_%00",
    "%00",
    "batch_%ED%A0%80",  # a lone surrogate, as UTF-8
    "batch_%FF",
    "batch_%C3%A9",
    "batch_a%20b",
    "batch_a.b",
    "file-abc",
    "batch_",
    "batch_" + "a" * 251,
]


@pytest.mark.parametrize("batch_id", IMPOSSIBLE_IDS, ids=range(len(IMPOSSIBLE_IDS)))
async def test_an_impossible_id_is_the_404_of_an_unknown_id(served: Served, batch_id: str) -> None:
    for method, path in (("GET", f"/batches/{batch_id}"), ("POST", f"/batches/{batch_id}/cancel")):
        status, _, body = await raw(served.live, method, path)
        assert status == 404, (method, path, body)
        error = assert_openai_error(body, param="batch_id")
        assert error["code"] == "not_found" and error["message"].startswith("No batch found with id ")
    status, _, unknown = await raw(served.live, "GET", "/batches/batch_unknown")
    assert status == 404 and set(unknown["error"]) == set(body["error"])


@pytest.mark.parametrize("after", ["\x00", "batch_\x00", "batch_\ud800", "\xff", "batch_" + "a" * 251, "batch_unknown"])
async def test_a_cursor_no_batch_has_is_an_empty_page(served: Served, after: str) -> None:
    status, _, made = await create(served)
    assert status == 200, made
    status, _, page = await raw(served.live, "GET", f"/batches?after={_quote(after)}")
    assert status == 200, page
    assert (page["data"], page["has_more"]) == ([], False)
    status, _, real = await raw(served.live, "GET", "/batches", params={"after": made["id"]})
    assert status == 200 and made["id"] not in [b["id"] for b in real["data"]]


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@pytest.mark.parametrize("limit", ["0", "101", "-1", "1000000000000000000000", "abc"])
async def test_a_limit_outside_1_to_100_is_a_400_naming_limit(served: Served, limit: str) -> None:
    status, _, body = await raw(served.live, "GET", "/batches", params={"limit": limit})
    assert status == 400, body
    assert assert_openai_error(body, param="limit")["type"] == "invalid_request_error"


# strings a store cannot hold ------------------------------------------------------------------------------------

UNSTORABLE = [
    ({"input_file_id": "file-\x00"}, "input_file_id"),
    ({"input_file_id": "file-\ud800"}, "input_file_id"),
    ({"endpoint": CHAT + "\x00"}, "endpoint"),
    ({"completion_window": "24h\udfff"}, "completion_window"),
    ({"idempotency_key": "k\x00"}, "idempotency_key"),
    ({"idem_tok": "k\ud800"}, "idem_tok"),
    ({"metadata": {"k\x00": "v"}}, "metadata"),
    ({"metadata": {"k": "v\ud800"}}, "metadata.k"),
]


@pytest.mark.parametrize(("fields", "param"), UNSTORABLE, ids=[f"{p}-{i}" for i, (_, p) in enumerate(UNSTORABLE)])
async def test_a_string_a_store_cannot_hold_is_a_400_naming_the_field(
    served: Served, fields: dict[str, Any], param: str
) -> None:
    before = await batch_count(served)
    body = json.dumps(served.body() | fields).encode()  # ensure_ascii: a lone surrogate travels as \ud800
    status, _, answer = await send(served.live, [], body)
    assert status == 400, answer
    assert assert_openai_error(answer, param=param)["code"] == "invalid_value"
    assert await batch_count(served) == before


# Idempotency-Key ------------------------------------------------------------------------------------------------

SAME_KEYS = [
    (b"plain-key-1", "plain-key-1"),
    (b'"quoted-key-1"', "quoted-key-1"),
    (b'"with \\"quote\\" and \\\\ backslash"', 'with "quote" and \\ backslash'),
    (b'"param-key-1";v=1;x', "param-key-1"),
    (b"  spaced-key-1  ", "spaced-key-1"),
    (b'" inner spaces "', " inner spaces "),
]


@pytest.mark.parametrize(("header", "key"), SAME_KEYS, ids=range(len(SAME_KEYS)))
async def test_a_key_by_header_and_by_body_is_one_batch(served: Served, header: bytes, key: str) -> None:
    metadata = {"case": key}
    status, first_headers, first = await create(served, header, metadata=metadata)
    assert status == 200, first
    assert "idempotent-replayed" not in first_headers
    for again in (
        await create(served, None, metadata=metadata, idempotency_key=key),
        await create(served, header, metadata=metadata, idempotency_key=key),
        await create(served, header, metadata=metadata),
    ):
        assert again[0] == 200, again
        assert again[2]["id"] == first["id"]
        assert again[1].get("idempotent-replayed") == "true"


@pytest.mark.parametrize(
    "header",
    ["clé-ü-1".encode(), '"clé-ü-1"'.encode(), "clé-ü-1".encode("latin-1"), b'"\xe2\x80\xae"'],
    ids=["utf8-bare", "utf8-quoted", "latin1", "bidi"],
)
async def test_a_non_ascii_header_is_a_400_that_says_so_and_makes_nothing(served: Served, header: bytes) -> None:
    key = "clé-ü-1"
    status, _, by_body = await create(served, None, idempotency_key=key)  # a Unicode key travels in the body
    assert status == 200, by_body
    before = await batch_count(served)
    for extra in ({}, {"idempotency_key": key}):
        status, _, answer = await create(served, header, **extra)
        assert status == 400, answer
        error = assert_openai_error(answer, param="Idempotency-Key")
        assert "ASCII" in error["message"] and "idempotency_key" in error["message"]
    assert await batch_count(served) == before
    status, replay_headers, again = await create(served, None, idempotency_key=key)
    assert (status, again["id"], replay_headers.get("idempotent-replayed")) == (200, by_body["id"], "true")


@pytest.mark.parametrize(
    ("head", "param"),
    [
        ([b'Idempotency-Key: ""'], "Idempotency-Key"),
        ([b'Idempotency-Key: "a\tb"'], "Idempotency-Key"),
        ([b'Idempotency-Key: "unterminated'], "Idempotency-Key"),
        ([b'Idempotency-Key: "a";'], "Idempotency-Key"),
        ([b"Idempotency-Key: a, b"], "Idempotency-Key"),
        ([b"Idempotency-Key: same", b"Idempotency-Key: same"], "Idempotency-Key"),
        ([b"Idempotency-Key: " + b"k" * 256], "Idempotency-Key"),
        ([b'Idempotency-Key: "header-key"'], "idempotency_key"),  # the body says body-key
    ],
    ids=["empty", "control", "unterminated", "dangling-param", "list", "twice", "too-long", "differ"],
)
async def test_a_malformed_or_contradicted_header_is_a_400_and_makes_nothing(
    served: Served, head: list[bytes], param: str
) -> None:
    before = await batch_count(served)
    status, _, answer = await send(served.live, head, json.dumps(served.body(idempotency_key="body-key")).encode())
    assert status == 400, answer
    assert_openai_error(answer, param=param)
    assert await batch_count(served) == before


# the parser alone -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("abc", "abc"),
        ('"abc"', "abc"),
        ('"a\\\\b\\"c"', 'a\\b"c'),
        ('"k";a=1;b="x;y";c=?1;d=:AA==:;e=tok/1;f=-1.5', "k"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("a b", "a b"),
        ('""', ""),
    ],
)
async def test_parse_header_reads_sf_strings_and_bare_keys(value: str, key: str) -> None:
    assert parse_header(value) == key


@pytest.mark.parametrize(
    "value", ["", '"', '"a\\n"', '"a"b', '"a" ;x', '"a";X=1', "a;b", "a,b", 'a"b', "a\\b", "é", "a\x7f", "a\x00"]
)
async def test_parse_header_refuses_the_rest(value: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_header(value)
    assert (caught.value.status, caught.value.param) == (400, "Idempotency-Key")
