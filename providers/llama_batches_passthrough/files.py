"""``remote::passthrough`` files: the remote's Files API, uploads and downloads streamed through. A file belongs
to the principal that uploaded it (or whose batch produced it); for another principal it does not exist.

An upload's expiry known only at the end of its content (:class:`~llama_batches.api.files.LateExpiresAfter`) is
sent to the remote as it came: its form fields after the file part, in the same request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import aiohttp
from aiohttp.payload import AsyncIterablePayload

from llama_batches.api import ExpiresAfter, FileDeleted, FileObject, FilePurpose, ListFilesResponse, Order
from llama_batches.api.files import LateExpiresAfter
from llama_batches.errors import InvalidRequestError, NotFoundError
from llama_batches.principal import current_principal
from llama_batches.storage import Table

from .config import PassthroughFilesConfig
from .remote import Owned, Remote

__all__ = ["PassthroughFiles"]

CHUNK = 1024 * 1024


def _expiry_fields(expires_after: ExpiresAfter) -> list[tuple[str, str]]:
    return [("expires_after[anchor]", expires_after.anchor), ("expires_after[seconds]", str(expires_after.seconds))]


async def _content(
    file: AsyncIterable[bytes], late: LateExpiresAfter | None, boundary: bytes, failed: list[BaseException]
) -> AsyncIterator[bytes]:
    """``file``'s chunks, then (``late`` known once they are read) its expiry fields: the file part ended and parts of
    their own opened with the form's ``boundary`` (the form writer ends the last). An error of ``file`` is kept in
    ``failed``, since aiohttp reports it as a connection error."""
    try:
        async for chunk in file:
            yield chunk
        expires = late.get() if late is not None else None
    except Exception as exc:
        failed.append(exc)
        raise
    for name, value in _expiry_fields(expires) if expires is not None else []:
        disposition = f'\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}'
        yield b"\r\n--" + boundary + disposition.encode("ascii")


class PassthroughFiles:
    """The Files API of a remote server."""

    accepts_late_expiry = True
    """``openai_upload_file`` takes a :class:`LateExpiresAfter`: sent after the file part."""

    def __init__(self, config: PassthroughFilesConfig, owned: Table[Owned]) -> None:
        self.remote = Remote(config)
        self.owned = owned

    async def shutdown(self) -> None:
        """Close the connections to the remote."""
        await self.remote.close()

    async def openai_upload_file(
        self,
        file: AsyncIterable[bytes],
        purpose: FilePurpose,
        filename: str,
        expires_after: ExpiresAfter | LateExpiresAfter | None = None,
    ) -> FileObject:
        purpose = FilePurpose.parse(purpose)
        late = expires_after if isinstance(expires_after, LateExpiresAfter) else None
        failed: list[BaseException] = []
        with aiohttp.MultipartWriter("form-data") as form:
            form.append(purpose.value).set_content_disposition("form-data", name="purpose")
            for name, value in _expiry_fields(expires_after) if isinstance(expires_after, ExpiresAfter) else []:
                form.append(value).set_content_disposition("form-data", name=name)
            content = _content(file, late, form.boundary.encode("ascii"), failed)
            payload = AsyncIterablePayload(content, content_type="application/octet-stream")
            form.append_payload(payload).set_content_disposition("form-data", name="file", filename=filename)
            created = await self._post(form, failed)
        await self.owned.insert(current_principal(), Owned(id=created.id, created_at=created.created_at))
        return created

    async def _post(self, form: aiohttp.MultipartWriter, failed: list[BaseException]) -> FileObject:
        """The remote's file; when the content failed (a bad form field after the file, the client gone), its own
        error, not what the remote or aiohttp made of the broken request."""
        try:
            async with self.remote.session().post(f"{self.remote.base_url}/files", data=form) as response:
                await self.remote.check(response)
                return FileObject.model_validate(await response.json())
        except (aiohttp.ClientError, TimeoutError) as exc:
            if failed:
                raise failed[0] from None
            raise self.remote.transport_error(exc) from exc
        except Exception:
            if failed:
                raise failed[0] from None
            raise

    async def openai_list_files(
        self,
        after: str | None = None,
        limit: int = 10_000,
        order: Order = Order.desc,
        purpose: FilePurpose | None = None,
    ) -> ListFilesResponse:
        """The caller's files: one page of the ownership table, each file's metadata fetched concurrently."""
        if not 1 <= limit <= 10_000:
            raise InvalidRequestError("limit must be between 1 and 10000.", code="invalid_value", param="limit")
        wanted = FilePurpose.parse(purpose).value if purpose is not None else None
        owner, data, cursor = current_principal(), [], after
        while True:  # a purpose filter is applied to the remote's answers, so a page may take several reads
            page = await self.owned.list(owner, after=cursor, limit=limit, order=Order(order))
            files = await asyncio.gather(*(self._metadata(o.id) for o in page.items))
            data += [f for f in files if f is not None and (wanted is None or f.purpose == wanted)]
            if len(data) >= limit or not page.has_more:
                break
            cursor = page.items[-1].id
        return ListFilesResponse.of(data[:limit], has_more=page.has_more or len(data) > limit)

    async def _metadata(self, file_id: str) -> FileObject | None:
        sdk = self.remote.sdk
        try:
            return await self.remote.call(lambda: sdk.files.retrieve(file_id))
        except NotFoundError:
            return None  # deleted on the remote

    async def openai_retrieve_file(self, file_id: str) -> FileObject:
        if await self.owned.get(current_principal(), file_id) is None:
            raise NotFoundError.for_resource("file", file_id, param="file_id")
        sdk = self.remote.sdk
        return await self.remote.call(lambda: sdk.files.retrieve(file_id))

    async def openai_retrieve_file_content(self, file_id: str) -> AsyncIterator[bytes]:
        await self.openai_retrieve_file(file_id)  # a missing file is a 404 before any byte is streamed
        return self._stream(file_id)

    async def _stream(self, file_id: str) -> AsyncIterator[bytes]:
        url = f"{self.remote.base_url}/files/{file_id}/content"
        try:
            async with self.remote.session().get(url) as response:
                await self.remote.check(response)
                async for chunk in response.content.iter_chunked(CHUNK):
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self.remote.transport_error(exc) from exc

    async def openai_delete_file(self, file_id: str) -> FileDeleted:
        await self.openai_retrieve_file(file_id)
        sdk = self.remote.sdk
        deleted = await self.remote.call(lambda: sdk.files.delete(file_id))
        await self.owned.delete(current_principal(), file_id)
        return deleted
