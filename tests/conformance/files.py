"""The Files conformance suite: every files provider must pass it unchanged.

A provider's test module binds ``files_impl`` (a Files implementation in a running stack) and inherits.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable

import pytest

from llama_batches.api import FilePurpose, Files, Order
from llama_batches.errors import InvalidRequestError, NotFoundError
from llama_batches.principal import acting_as


async def chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    """An async byte stream, as the server hands an upload to a provider."""
    for part in parts:
        yield part


async def read_all(files: Files, file_id: str) -> bytes:
    """The whole content of a file (tests only: providers never do this)."""
    stream = await files.openai_retrieve_file_content(file_id)
    return b"".join([chunk async for chunk in stream])


JSONL = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'


class FilesConformance:
    """Bind ``files_impl`` in a subclass."""

    async def test_upload_returns_an_openai_file_object(self, files_impl: Files) -> None:
        created = await files_impl.openai_upload_file(chunks([JSONL, JSONL]), FilePurpose.batch, "in.jsonl")
        assert created.object == "file"
        assert created.id.startswith("file-")
        assert created.bytes == 2 * len(JSONL)
        assert created.filename == "in.jsonl"
        assert created.purpose == "batch"
        assert created.created_at > 0
        assert await files_impl.openai_retrieve_file(created.id) == created

    async def test_content_streams_back_the_same_bytes(self, files_impl: Files) -> None:
        payload = [os.urandom(700_000) for _ in range(5)]  # several MB, several chunks each way
        created = await files_impl.openai_upload_file(chunks(payload), FilePurpose.user_data, "blob.bin")
        stream = await files_impl.openai_retrieve_file_content(created.id)
        received = [chunk async for chunk in stream]
        assert b"".join(received) == b"".join(payload)
        assert created.bytes == sum(map(len, payload))

    async def test_an_empty_file_can_be_stored(self, files_impl: Files) -> None:
        # user_data: batch_output is no upload purpose for a remote (OpenAI's, or llama-batches serve's)
        created = await files_impl.openai_upload_file(chunks([]), FilePurpose.user_data, "empty.jsonl")
        assert created.bytes == 0
        assert await read_all(files_impl, created.id) == b""

    async def test_list_is_newest_first_and_pages_with_after(self, files_impl: Files) -> None:
        ids = [
            (await files_impl.openai_upload_file(chunks([JSONL]), FilePurpose.batch, f"{i}.jsonl")).id for i in range(5)
        ]
        first = await files_impl.openai_list_files(limit=2)
        assert [f.id for f in first.data] == ids[::-1][:2]
        assert first.has_more and first.first_id == ids[4] and first.last_id == ids[3]
        rest = await files_impl.openai_list_files(after=first.last_id, limit=10)
        assert [f.id for f in rest.data] == ids[::-1][2:]
        assert not rest.has_more
        oldest = await files_impl.openai_list_files(order=Order.asc, limit=1)
        assert [f.id for f in oldest.data] == ids[:1]

    async def test_list_filters_by_purpose(self, files_impl: Files) -> None:
        batch = await files_impl.openai_upload_file(chunks([JSONL]), FilePurpose.batch, "in.jsonl")
        await files_impl.openai_upload_file(chunks([b"{}"]), FilePurpose.user_data, "data.json")
        listed = await files_impl.openai_list_files(purpose=FilePurpose.batch)
        assert [f.id for f in listed.data] == [batch.id]

    async def test_list_refuses_a_limit_out_of_range(self, files_impl: Files) -> None:
        with pytest.raises(InvalidRequestError) as info:
            await files_impl.openai_list_files(limit=0)
        assert info.value.param == "limit"

    async def test_a_missing_file_is_not_found_everywhere(self, files_impl: Files) -> None:
        for call in (
            files_impl.openai_retrieve_file,
            files_impl.openai_retrieve_file_content,
            files_impl.openai_delete_file,
        ):
            with pytest.raises(NotFoundError) as info:
                await call("file-doesnotexist")
            assert info.value.status == 404

    async def test_delete_removes_metadata_and_content(self, files_impl: Files) -> None:
        created = await files_impl.openai_upload_file(chunks([JSONL]), FilePurpose.batch, "in.jsonl")
        deleted = await files_impl.openai_delete_file(created.id)
        assert deleted.id == created.id and deleted.deleted and deleted.object == "file"
        with pytest.raises(NotFoundError):
            await files_impl.openai_retrieve_file(created.id)
        with pytest.raises(NotFoundError):
            await files_impl.openai_retrieve_file_content(created.id)
        assert created.id not in [f.id for f in (await files_impl.openai_list_files()).data]

    async def test_an_unknown_purpose_is_refused_naming_the_field(self, files_impl: Files) -> None:
        with pytest.raises(InvalidRequestError) as info:
            await files_impl.openai_upload_file(chunks([b"x"]), "nonsense", "x")  # type: ignore[arg-type]
        assert info.value.param == "purpose"
        assert "batch" in info.value.message

    async def test_another_principal_sees_nothing(self, files_impl: Files) -> None:
        with acting_as("alice"):
            mine = await files_impl.openai_upload_file(chunks([JSONL]), FilePurpose.batch, "in.jsonl")
        with acting_as("bob"):
            assert (await files_impl.openai_list_files()).data == []
            with pytest.raises(NotFoundError):
                await files_impl.openai_retrieve_file(mine.id)
            with pytest.raises(NotFoundError):
                await files_impl.openai_retrieve_file_content(mine.id)
            with pytest.raises(NotFoundError):
                await files_impl.openai_delete_file(mine.id)
        with acting_as("alice"):
            assert await read_all(files_impl, mine.id) == JSONL
