"""``remote::passthrough`` batches: the remote's Batches API, made idempotent by a local ledger.

A create with a key first claims (principal, key) in the ledger with an atomic insert. The one claimant calls
the remote, sending the key (scoped to the principal) as ``Idempotency-Key`` and a random marker in the batch's
metadata, then records the remote batch id. Everyone else waits for that record and returns the same batch, or
raises ConflictError when their parameters differ. When the claimant's answer was lost (a timeout, a crash), the
next create with the key looks for the marker among the remote's recent batches before it dares to create again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from openai import omit
from openai.pagination import AsyncCursorPage
from pydantic import BaseModel

from llama_batches.api import Batch, ListBatchesResponse, Order, OutputExpiresAfter
from llama_batches.errors import APIError, InvalidRequestError, NotFoundError
from llama_batches.idempotency import IdempotentCreate, mark_replayed
from llama_batches.principal import current_principal
from llama_batches.storage import Stored, Table

from .config import PassthroughBatchesConfig
from .remote import Owned, Remote

__all__ = ["MARKER_KEY", "LedgerEntry", "LedgerState", "PassthroughBatches"]

MARKER_KEY = "llama_batches_idempotency"
MAX_METADATA_PAIRS = 16
POLL_S = 0.02
RECOVERY_SLACK_S = 300


class LedgerState(StrEnum):
    """Where a claimed key stands."""

    claimed = "claimed"  # a create is (or was, if its answer was lost) on its way to the remote
    created = "created"  # the remote batch id is known


class LedgerEntry(BaseModel):
    """An idempotency key of a principal: what it was used with, and what it made on the remote."""

    id: str
    created_at: int
    idempotency_key: str
    fingerprint: str
    marker: str
    state: LedgerState = LedgerState.claimed
    claimed_until: float = 0.0
    remote_batch_id: str | None = None


def _marked(metadata: dict[str, str] | None, marker: str) -> dict[str, str] | None:
    """``metadata`` plus the marker (``n:`` when the caller sent none), if there is room for it."""
    if metadata is not None and len(metadata) >= MAX_METADATA_PAIRS:
        return metadata  # no room: recovery by marker is off for this batch; the remote's key still holds
    return {**(metadata or {}), MARKER_KEY: ("n:" if metadata is None else "d:") + marker}


def _unmarked(batch: Batch) -> Batch:
    """``batch`` as the caller created it: without the marker."""
    if not batch.metadata or MARKER_KEY not in batch.metadata:
        return batch
    metadata = {k: v for k, v in batch.metadata.items() if k != MARKER_KEY}
    was_none = batch.metadata[MARKER_KEY].startswith("n:")
    return batch.model_copy(update={"metadata": None if was_none and not metadata else metadata})


class PassthroughBatches:
    """The Batches API of a remote server, with idempotent creation."""

    def __init__(
        self,
        config: PassthroughBatchesConfig,
        ledger: Table[LedgerEntry],
        owned: Table[Owned],
        owned_files: Table[Owned] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.owned = owned
        self.owned_files = owned_files
        self.remote = Remote(config)
        self._clock = clock

    async def shutdown(self) -> None:
        """Close the connections to the remote."""
        await self.remote.close()

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        output_expires_after: OutputExpiresAfter | None = None,
    ) -> Batch:
        params: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
            "metadata": metadata,
            "output_expires_after": output_expires_after.model_dump() if output_expires_after else None,
        }
        if self.owned_files is not None and await self.owned_files.get(current_principal(), input_file_id) is None:
            raise NotFoundError.for_resource("file", input_file_id, param="input_file_id")  # not the caller's file
        if idempotency_key is None:
            return await self._mine(await self._remote_create(params, None, None))
        claim = IdempotentCreate.of(current_principal(), idempotency_key, params)
        owner = claim.owner
        entry = LedgerEntry(
            id=claim.scope,
            created_at=int(self._clock()),
            idempotency_key=idempotency_key,
            fingerprint=claim.fingerprint,
            marker=uuid.uuid4().hex,
            claimed_until=self._claim_deadline(),
        )
        return await self._settle(owner, entry, params)

    def _claim_deadline(self) -> float:
        """Until when a claimant's create may still land on the remote."""
        return self._clock() + self.config.timeout_s + self.config.lost_create_grace_s

    async def _remote_create(self, params: dict[str, Any], key: str | None, marker: str | None) -> Batch:
        sdk, body = self.remote.sdk, dict(params)
        if marker is not None:
            body["metadata"] = _marked(params["metadata"], marker)
        if body["output_expires_after"] is None:
            del body["output_expires_after"]
        headers = {"Idempotency-Key": key} if key else {}
        once = sdk.with_options(max_retries=0)  # a create is never blindly repeated: a lost one is recovered instead
        return await self.remote.call(lambda: once.batches.create(**body, extra_headers=headers))

    async def _settle(self, owner: str, entry: LedgerEntry, params: dict[str, Any]) -> Batch:
        """Claim the key, or wait for its claimant, or recover its lost create; until one of them gives a batch."""
        deadline = self._clock() + self.config.claim_wait_s
        while True:
            if await self.ledger.insert(owner, entry):
                return await self._create_claimed(owner, Stored(entry, 1), params)
            stored = await self.ledger.get(owner, entry.id)
            if stored is None:
                continue  # the claim was released after the remote refused it: claim again
            current = stored.value
            claim = IdempotentCreate(owner, entry.idempotency_key, entry.fingerprint)
            claim.check(current.fingerprint, current.remote_batch_id)
            if current.state is LedgerState.created and current.remote_batch_id:
                mark_replayed()
                return await self.retrieve_batch(current.remote_batch_id)
            waiting = current.state is LedgerState.claimed and self._clock() < current.claimed_until
            if waiting and self._clock() < deadline:
                await asyncio.sleep(POLL_S)
                continue
            batch = await self._recover(owner, stored, params)
            if batch is not None:
                return batch

    async def _create_claimed(self, owner: str, claim: Stored[LedgerEntry], params: dict[str, Any]) -> Batch:
        """We hold the claim: create on the remote and record the id."""
        entry = claim.value
        try:
            batch = await self._remote_create(params, entry.id, entry.marker)
        except APIError as exc:
            if 400 <= exc.status < 500 and exc.status not in (408, 429):  # the remote refused: nothing was made
                await self.ledger.delete(owner, entry.id)
            # otherwise it may have been made: the claim stands until claimed_until, then the next create with
            # this key looks for the batch on the remote before making one
            raise
        mine = await self._mine(batch)  # owned before the ledger says created: waiters read it right after
        created = entry.model_copy(update={"state": LedgerState.created, "remote_batch_id": batch.id})
        await self.ledger.replace(owner, created, expected_version=claim.version)
        return mine

    async def _recover(self, owner: str, stored: Stored[LedgerEntry], params: dict[str, Any]) -> Batch | None:
        """The claimant's answer was lost (and its create had time to land): adopt the remote batch carrying its
        marker, or take the claim over and create. None when another create moved the entry first (look again)."""
        entry = stored.value
        found = await self._find_marked(entry)
        if found is not None:
            mine = await self._mine(found)
            created = entry.model_copy(update={"state": LedgerState.created, "remote_batch_id": found.id})
            if not await self.ledger.replace(owner, created, expected_version=stored.version):
                return None
            mark_replayed()
            return mine
        retaken = entry.model_copy(update={"state": LedgerState.claimed, "claimed_until": self._claim_deadline()})
        if not await self.ledger.replace(owner, retaken, expected_version=stored.version):
            return None
        return await self._create_claimed(owner, Stored(retaken, stored.version + 1), params)

    async def _find_marked(self, entry: LedgerEntry) -> Batch | None:
        """The remote batch whose metadata carries ``entry``'s marker, among its recent batches."""
        after: str | None = None
        for _ in range(self.config.recovery_pages):
            page = await self._list_page(100, after)
            for batch in page.data:
                marker = (batch.metadata or {}).get(MARKER_KEY, "")
                if marker[2:] == entry.marker:
                    return batch
            if not page.data or not page.has_more or page.data[-1].created_at < entry.created_at - RECOVERY_SLACK_S:
                return None
            after = page.data[-1].id
        return None

    async def _list_page(self, limit: int, after: str | None) -> AsyncCursorPage[Batch]:
        sdk = self.remote.sdk
        return await self.remote.call(lambda: sdk.batches.list(limit=limit, after=after if after else omit))

    async def _mine(self, batch: Batch) -> Batch:
        """Record that the current principal owns ``batch`` (and its output files); the batch without marker."""
        owner = current_principal()
        await self.owned.insert(owner, Owned(id=batch.id, created_at=batch.created_at))
        if self.owned_files is not None:
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    await self.owned_files.insert(owner, Owned(id=file_id, created_at=batch.created_at))
        return _unmarked(batch)

    async def _check_owned(self, batch_id: str) -> None:
        if await self.owned.get(current_principal(), batch_id) is None:
            raise NotFoundError.for_resource("batch", batch_id, param="batch_id")

    async def _fetch(self, batch_id: str) -> Batch:
        sdk = self.remote.sdk
        return await self.remote.call(lambda: sdk.batches.retrieve(batch_id))

    async def retrieve_batch(self, batch_id: str) -> Batch:
        await self._check_owned(batch_id)
        return await self._mine(await self._fetch(batch_id))

    async def cancel_batch(self, batch_id: str) -> Batch:
        await self._check_owned(batch_id)
        sdk = self.remote.sdk
        return await self._mine(await self.remote.call(lambda: sdk.batches.cancel(batch_id)))

    async def list_batches(self, after: str | None = None, limit: int = 20) -> ListBatchesResponse:
        """The caller's batches, newest first: one page of the ownership table, each batch fetched from the remote
        (concurrently: a page costs one round trip of latency, not ``limit``)."""
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100.", code="invalid_value", param="limit")
        page = await self.owned.list(current_principal(), after=after, limit=limit, order=Order.desc)
        batches = await asyncio.gather(*(self._fetch(owned.id) for owned in page.items))
        data = [_unmarked(batch) for batch in batches]
        return ListBatchesResponse.of(data, has_more=page.has_more)
