"""The storage conformance suite: every Table backend (SQLite, memory, Postgres) must pass it unchanged.

A backend's test module binds the ``tables`` fixture (an async factory ``name -> Table[Note]``), and for the
result log and lease suites ``result_logs`` and ``lease_tables``, all three opening tables on ONE database (claims
and fences join a lease table with another table of the same database), and inherits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from pydantic import BaseModel, Field

from llama_batches.api import Order
from llama_batches.storage import Lease, LeaseLost, Leases, RequestResult, ResultLog, ResultTotals, Table


class Counts(BaseModel):
    """A nested object, for updates two levels down."""

    done: int = 0
    failed: int = 0


class Note(BaseModel):
    """A record as providers store them: an id, a creation time and a payload (some of it nested)."""

    id: str
    created_at: int
    text: str = ""
    counts: Counts = Field(default_factory=Counts)
    extra: Counts | None = None
    labels: list[str] = Field(default_factory=list)


TableOpener = Callable[[str], Awaitable[Table[Note]]]
LogOpener = Callable[[str], Awaitable[ResultLog]]
LeaseOpener = Callable[[str], Awaitable[Leases]]


def result(line: int, *, ok: bool = True, batch_id: str = "batch_1", tokens: int = 1) -> RequestResult:
    return RequestResult(
        batch_id, line, f"req-{line}", ok, b'{"line": %d}' % line, input_tokens=tokens, output_tokens=2 * tokens
    )


async def _fill(table: Table[Note], owner: str, count: int, *, same_second: bool = False) -> list[Note]:
    notes = [Note(id=f"n{i:03d}", created_at=1000 if same_second else 1000 + i, text=str(i)) for i in range(count)]
    for note in notes:
        assert await table.insert(owner, note, tag="even" if int(note.text) % 2 == 0 else "odd")
    return notes


class StorageConformance:
    """Bind ``tables`` in a subclass."""

    @pytest.fixture
    async def table(self, tables: TableOpener) -> Table[Note]:
        return await tables("notes")

    async def test_insert_then_get_returns_the_record_at_version_1(self, table: Table[Note]) -> None:
        note = Note(id="a", created_at=5, text="hello")
        assert await table.insert("alice", note)
        stored = await table.get("alice", "a")
        assert stored is not None
        assert stored.value == note
        assert stored.version == 1

    async def test_insert_if_absent_keeps_the_first_record(self, table: Table[Note]) -> None:
        assert await table.insert("alice", Note(id="a", created_at=1, text="first"))
        assert not await table.insert("alice", Note(id="a", created_at=2, text="second"))
        stored = await table.get("alice", "a")
        assert stored is not None and stored.value.text == "first"

    async def test_concurrent_inserts_of_one_id_make_exactly_one_winner(self, table: Table[Note]) -> None:
        results = await asyncio.gather(
            *(table.insert("alice", Note(id="race", created_at=1, text=str(i))) for i in range(50))
        )
        assert results.count(True) == 1
        stored = await table.get("alice", "race")
        assert stored is not None and stored.value.text == str(results.index(True))

    async def test_compare_and_set_succeeds_only_at_the_expected_version(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1, text="v1"))
        assert await table.replace("alice", Note(id="a", created_at=1, text="v2"), expected_version=1)
        assert not await table.replace("alice", Note(id="a", created_at=1, text="stale"), expected_version=1)
        stored = await table.get("alice", "a")
        assert stored is not None
        assert (stored.value.text, stored.version) == ("v2", 2)

    async def test_concurrent_compare_and_set_loses_no_update(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="counter", created_at=1, text="0"))

        async def increment() -> None:
            while True:
                stored = await table.get("alice", "counter")
                assert stored is not None
                bumped = stored.value.model_copy(update={"text": str(int(stored.value.text) + 1)})
                if await table.replace("alice", bumped, expected_version=stored.version):
                    return

        await asyncio.gather(*(increment() for _ in range(20)))
        stored = await table.get("alice", "counter")
        assert stored is not None
        assert (stored.value.text, stored.version) == ("20", 21)

    async def test_replace_of_a_missing_record_stores_nothing(self, table: Table[Note]) -> None:
        assert not await table.replace("alice", Note(id="ghost", created_at=1), expected_version=1)
        assert await table.get("alice", "ghost") is None

    async def test_delete_removes_once(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1))
        assert await table.delete("alice", "a")
        assert not await table.delete("alice", "a")
        assert await table.get("alice", "a") is None

    async def test_rows_are_scoped_by_owner(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1, text="alice's"))
        assert await table.get("bob", "a") is None
        assert not await table.delete("bob", "a")
        assert not await table.replace("bob", Note(id="a", created_at=1, text="bob's"), expected_version=1)
        assert (await table.list("bob")).items == []
        assert await table.insert("bob", Note(id="a", created_at=1, text="bob's"))
        stored = await table.get("alice", "a")
        assert stored is not None and stored.value.text == "alice's"

    async def test_list_is_newest_first_by_default_and_oldest_first_in_asc(self, table: Table[Note]) -> None:
        notes = await _fill(table, "alice", 5)
        desc = await table.list("alice", limit=10)
        assert [n.id for n in desc.items] == [n.id for n in reversed(notes)]
        assert not desc.has_more
        asc = await table.list("alice", limit=10, order=Order.asc)
        assert [n.id for n in asc.items] == [n.id for n in notes]

    async def test_ties_in_created_at_keep_insertion_order(self, table: Table[Note]) -> None:
        notes = await _fill(table, "alice", 6, same_second=True)
        page = await table.list("alice", limit=10)
        assert [n.id for n in page.items] == [n.id for n in reversed(notes)]

    @pytest.mark.parametrize("order", [Order.desc, Order.asc])
    @pytest.mark.parametrize("same_second", [False, True])
    async def test_cursor_pages_visit_every_record_once(
        self, table: Table[Note], order: Order, same_second: bool
    ) -> None:
        notes = await _fill(table, "alice", 23, same_second=same_second)
        seen: list[str] = []
        after: str | None = None
        while True:
            page = await table.list("alice", after=after, limit=5, order=order)
            seen += [n.id for n in page.items]
            if not page.has_more:
                break
            after = page.items[-1].id
        expected = [n.id for n in notes]
        assert seen == (expected if order is Order.asc else expected[::-1])

    async def test_list_filters_by_tag(self, table: Table[Note]) -> None:
        await _fill(table, "alice", 6)
        odd = await table.list("alice", limit=10, tag="odd", order=Order.asc)
        assert [n.text for n in odd.items] == ["1", "3", "5"]
        page = await table.list("alice", limit=1, tag="even")
        assert [n.text for n in page.items] == ["4"] and page.has_more

    async def test_replace_updates_the_tag(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1), tag="validating")
        assert await table.replace("alice", Note(id="a", created_at=1), expected_version=1, tag="completed")
        assert (await table.list("alice", tag="validating")).items == []
        assert [n.id for n in (await table.list("alice", tag="completed")).items] == ["a"]

    async def test_a_cursor_that_is_not_in_the_table_gives_an_empty_page(self, table: Table[Note]) -> None:
        await _fill(table, "alice", 3)
        page = await table.list("alice", after="nope")
        assert page.items == [] and not page.has_more

    async def test_tables_are_independent(self, tables: TableOpener) -> None:
        first, second = await tables("first"), await tables("second")
        await first.insert("alice", Note(id="a", created_at=1))
        assert await second.get("alice", "a") is None

    async def test_list_tagged_spans_owners_oldest_first(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=3), tag="in_progress")
        await table.insert("bob", Note(id="b", created_at=1), tag="validating")
        await table.insert("bob", Note(id="c", created_at=2), tag="completed")
        found = await table.list_tagged(["validating", "in_progress"])
        assert [(owner, stored.value.id, stored.version) for owner, stored in found] == [
            ("bob", "b", 1),
            ("alice", "a", 1),
        ]
        assert await table.list_tagged([]) == []
        assert len(await table.list_tagged(["validating", "in_progress"], limit=1)) == 1

    async def test_update_sets_fields_one_and_two_levels_down_and_returns_the_stored_record(
        self, table: Table[Note]
    ) -> None:
        await table.insert("alice", Note(id="a", created_at=1, text="v1", counts=Counts(done=4)), tag="validating")
        stored = await table.update("alice", "a", {"text": "v2", "counts": {"failed": 3}})
        assert stored is not None
        assert stored.value == Note(id="a", created_at=1, text="v2", counts=Counts(done=4, failed=3))
        assert stored.version == 2
        assert await table.get("alice", "a") == stored
        assert [n.id for n in (await table.list("alice", tag="validating")).items] == ["a"]

    async def test_update_makes_a_missing_or_null_parent_an_object(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1))
        stored = await table.update("alice", "a", {"extra": {"failed": 2}})
        assert stored is not None and stored.value.extra == Counts(failed=2)
        stored = await table.update("alice", "a", {"extra": {"done": 1, "failed": 5}})
        assert stored is not None and stored.value.extra == Counts(done=1, failed=5)

    async def test_update_replaces_lists_and_sets_null(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1, extra=Counts(done=1), labels=["x"]))
        stored = await table.update("alice", "a", {"labels": ["y", "z"], "extra": None})
        assert stored is not None
        assert (stored.value.labels, stored.value.extra) == (["y", "z"], None)

    async def test_update_applies_only_when_the_tag_is_one_of_when_tags(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1, text="v1"), tag="validating")
        assert await table.update("alice", "a", {"text": "no"}, when_tags=["in_progress", "finalizing"]) is None
        assert await table.update("alice", "a", {"text": "no"}, when_tags=[]) is None
        stored = await table.get("alice", "a")
        assert stored is not None and (stored.value.text, stored.version) == ("v1", 1)
        stored = await table.update("alice", "a", {"text": "v2"}, when_tags=["validating", "x"], tag="in_progress")
        assert stored is not None and (stored.value.text, stored.version) == ("v2", 2)
        assert (await table.list("alice", tag="validating")).items == []
        assert [n.id for n in (await table.list("alice", tag="in_progress")).items] == ["a"]

    async def test_update_of_an_untagged_row_with_when_tags_does_nothing(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1))
        assert await table.update("alice", "a", {"text": "no"}, when_tags=["validating"]) is None
        stored = await table.update("alice", "a", {"text": "yes"}, tag="completed")
        assert stored is not None and stored.value.text == "yes"
        assert [n.id for n in (await table.list("alice", tag="completed")).items] == ["a"]

    async def test_update_of_a_missing_row_writes_nothing(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1))
        assert await table.update("alice", "ghost", {"text": "x"}) is None
        assert await table.update("bob", "a", {"text": "x"}, tag="completed") is None
        assert await table.get("alice", "ghost") is None and await table.get("bob", "a") is None
        stored = await table.get("alice", "a")
        assert stored is not None and (stored.value.text, stored.version) == ("", 1)

    async def test_update_and_replace_share_the_row_version(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1))
        assert await table.replace("alice", Note(id="a", created_at=1, text="r"), expected_version=1)
        stored = await table.update("alice", "a", {"counts": {"done": 1}})
        assert stored is not None and stored.version == 3
        assert not await table.replace("alice", stored.value, expected_version=2)
        assert await table.replace("alice", stored.value.model_copy(update={"text": "s"}), expected_version=3)

    async def test_concurrent_conditional_updates_make_exactly_one_transition(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1), tag="validating")
        updates = [
            table.update("alice", "a", {"text": str(i)}, when_tags=["validating"], tag="in_progress") for i in range(20)
        ]
        results = await asyncio.gather(*updates)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1 and winners[0].version == 2
        assert await table.get("alice", "a") == winners[0]

    async def test_update_refuses_keys_that_are_not_identifiers(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1))
        for changes in ({"text') --": "x"}, {"counts": {"a.b": 1}}):
            with pytest.raises(ValueError, match="not a valid"):
                await table.update("alice", "a", changes)
        stored = await table.get("alice", "a")
        assert stored is not None and stored.version == 1

    async def test_records_and_changes_holding_nul_characters_update(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1, text="a\x00b"), tag="validating")
        stored = await table.update("alice", "a", {"counts": {"done": 1}}, when_tags=["validating"])
        assert stored is not None and (stored.value.text, stored.value.counts.done) == ("a\x00b", 1)
        stored = await table.update("alice", "a", {"labels": ["c\x00d"]}, when_tags=["validating"], tag="done")
        assert stored is not None and stored.value.labels == ["c\x00d"] and stored.version == 3
        assert await table.update("alice", "a", {"text": "x"}, when_tags=["validating"]) is None
        assert await table.get("alice", "a") == stored

    async def test_ids_and_owners_holding_nul_are_answered_without_a_query(self, table: Table[Note]) -> None:
        await table.insert("alice", Note(id="a", created_at=1))
        for owner, record_id in (("alice", "batch_\x00"), ("al\x00ice", "a")):
            assert await table.get(owner, record_id) is None
            assert not await table.delete(owner, record_id)
            assert await table.update(owner, record_id, {"text": "x"}) is None
            assert not await table.replace(owner, Note(id=record_id, created_at=1), expected_version=1)
        page = await table.list("alice", after="a\x00")
        assert page.items == [] and not page.has_more
        assert (await table.list("al\x00ice")).items == []
        assert [n.id for n in (await table.list("alice")).items] == ["a"]


class ResultLogConformance:
    """Bind ``result_logs`` in a subclass."""

    @pytest.fixture
    async def log(self, result_logs: LogOpener) -> ResultLog:
        return await result_logs("results")

    async def test_recorded_results_read_back_by_outcome_and_line(self, log: ResultLog) -> None:
        await log.record("alice", [result(3), result(1), result(2, ok=False)])
        assert [r.line for r in await log.read("batch_1", ok=True)] == [1, 3]
        failed = await log.read("batch_1", ok=False)
        assert failed == [result(2, ok=False)]
        assert [r.line for r in await log.read("batch_1", ok=True, after_line=1)] == [3]
        assert [r.line for r in await log.read("batch_1", ok=True, limit=1)] == [1]

    async def test_a_line_recorded_twice_keeps_the_first_result(self, log: ResultLog) -> None:
        await log.record("alice", [result(1, tokens=5)])
        await log.record("alice", [result(1, ok=False, tokens=9), result(2)])
        assert await log.done_lines("batch_1") == {1, 2}
        assert (await log.read("batch_1", ok=True))[0].input_tokens == 5

    async def test_totals_add_up_counts_and_tokens(self, log: ResultLog) -> None:
        await log.record("alice", [result(i, ok=i % 3 != 0, tokens=i) for i in range(1, 10)])
        assert await log.totals("batch_1") == ResultTotals(
            completed=6, failed=3, input_tokens=45, output_tokens=90, cached_tokens=0, reasoning_tokens=0
        )
        assert await log.totals("batch_other") == ResultTotals()

    async def test_batches_are_kept_apart_and_deleted_alone(self, log: ResultLog) -> None:
        await log.record("alice", [result(1), result(1, batch_id="batch_2")])
        await log.delete("batch_1")
        assert await log.done_lines("batch_1") == set()
        assert await log.done_lines("batch_2") == {1}

    async def test_many_results_in_one_record(self, log: ResultLog) -> None:
        await log.record("alice", [result(i) for i in range(1, 5001)])
        assert len(await log.done_lines("batch_1")) == 5000
        assert (await log.totals("batch_1")).completed == 5000


class LeasesConformance:
    """Bind ``lease_tables`` (an async factory ``name -> Leases``), ``tables`` and ``result_logs`` (on the same
    database, for claims and fences) in a subclass."""

    @pytest.fixture
    async def leases(self, lease_tables: LeaseOpener) -> Leases:
        return await lease_tables("leases")

    async def test_a_free_key_is_taken_at_the_next_epoch_and_held(self, leases: Leases) -> None:
        lease = await leases.acquire("batch_1", "w1", 10, now=100)
        assert lease == Lease("batch_1", "w1", epoch=1, failures=0)
        assert await leases.acquire("batch_1", "w2", 10, now=105) is None
        assert await leases.acquire("batch_1", "w1", 10, now=105) is None  # not even by its own holder
        assert await leases.holder("batch_1", now=105) == "w1"
        assert await leases.current("batch_1") == lease
        assert await leases.holder("batch_1", now=110) is None

    async def test_only_a_lease_its_holder_never_released_counts_a_failure_when_taken(self, leases: Leases) -> None:
        first = await leases.acquire("batch_1", "w1", 10, now=100)
        assert first is not None
        await leases.release(first)  # a clean end: the next holder finds nothing wrong
        second = await leases.acquire("batch_1", "w2", 10, now=101)
        assert second == Lease("batch_1", "w2", epoch=2, failures=0)
        third = await leases.acquire("batch_1", "w3", 10, now=120)  # w2 never released it
        assert third == Lease("batch_1", "w3", epoch=3, failures=1)
        claimed = await leases.acquire("batch_1", "w4", 10, now=140)
        assert claimed == Lease("batch_1", "w4", epoch=4, failures=2)

    async def test_an_expired_lease_is_taken_over_and_the_old_holder_loses_it(self, leases: Leases) -> None:
        first = await leases.acquire("batch_1", "w1", 10, now=100)
        assert first is not None
        assert await leases.holder("batch_1", now=111) is None
        second = await leases.acquire("batch_1", "w2", 10, now=111)
        assert second == Lease("batch_1", "w2", epoch=2, failures=1)  # w1 died holding it: one failure
        assert not await leases.renew(first, 10, now=112)
        assert await leases.renew(second, 10, now=112)
        assert await leases.holder("batch_1", now=121) == "w2"
        await leases.release(first)
        assert await leases.holder("batch_1", now=121) == "w2"

    async def test_a_lease_past_its_expiry_is_renewed_while_nobody_took_it(self, leases: Leases) -> None:
        lease = await leases.acquire("batch_1", "w1", 10, now=100)
        assert lease is not None
        assert await leases.renew(lease, 10, now=150)
        assert await leases.holder("batch_1", now=155) == "w1"
        assert await leases.acquire("batch_1", "w2", 10, now=155) is None

    async def test_epochs_grow_across_acquire_release_and_reacquire(self, leases: Leases) -> None:
        epochs: list[int] = []
        for holder in ("w1", "w2", "w1"):
            lease = await leases.acquire("batch_1", holder, 10, now=100)
            assert lease is not None and lease.holder == holder
            epochs.append(lease.epoch)
            await leases.release(lease)
            assert await leases.holder("batch_1", now=100) is None
        assert epochs == [1, 2, 3]
        assert await leases.current("batch_1") == Lease("batch_1", "", epoch=3)

    async def test_a_released_lease_can_be_neither_renewed_nor_released_again(self, leases: Leases) -> None:
        lease = await leases.acquire("batch_1", "w1", 10, now=100)
        assert lease is not None
        await leases.release(lease, until=120, failed=True)
        await leases.release(lease, failed=True)
        assert not await leases.renew(lease, 60, now=101)
        assert await leases.current("batch_1") == Lease("batch_1", "", epoch=1, failures=1)
        assert await leases.acquire("batch_1", "w2", 10, now=119) is None
        assert await leases.acquire("batch_1", "w2", 10, now=120) is not None

    async def test_release_until_keeps_the_key_free_of_holders_until_then(self, leases: Leases) -> None:
        lease = await leases.acquire("batch_1", "w1", 10, now=100)
        assert lease is not None
        await leases.release(lease, until=200)
        assert await leases.holder("batch_1", now=150) is None
        assert await leases.acquire("batch_1", "w2", 10, now=150) is None
        assert await leases.acquire("batch_1", "w2", 10, now=199.5) is None
        assert await leases.acquire("batch_1", "w2", 10, now=200) == Lease("batch_1", "w2", epoch=2)

    async def test_failures_accumulate_across_holders(self, leases: Leases) -> None:
        for expected, (holder, failed) in enumerate((("w1", True), ("w2", True), ("w3", False))):
            lease = await leases.acquire("batch_1", holder, 10, now=100)
            assert lease is not None and lease.failures == expected
            await leases.release(lease, failed=failed)
        current = await leases.current("batch_1")
        assert current is not None and (current.failures, current.epoch) == (2, 3)
        lease = await leases.acquire("batch_1", "w4", 10, now=100)
        assert lease is not None and lease.failures == 2

    async def test_concurrent_acquires_make_one_holder(self, leases: Leases) -> None:
        won = await asyncio.gather(*(leases.acquire("batch_1", f"w{i}", 10, now=100) for i in range(20)))
        winners = [lease for lease in won if lease is not None]
        assert len(winners) == 1 and winners[0].epoch == 1
        assert await leases.holder("batch_1", now=101) == winners[0].holder

    async def test_keys_are_independent(self, leases: Leases) -> None:
        first = await leases.acquire("batch_1", "w1", 10, now=100)
        second = await leases.acquire("batch_2", "w2", 10, now=100)
        assert first is not None and second is not None
        assert not await leases.renew(Lease("batch_2", "w1", first.epoch), 10, now=101)
        assert await leases.current("batch_3") is None
        assert await leases.holder("batch_3", now=100) is None

    async def test_keys_holding_nul_are_answered_without_a_query(self, leases: Leases) -> None:
        assert await leases.holder("batch_\x00", now=100) is None
        assert await leases.current("batch_\x00") is None

    async def test_a_fence_names_the_lease_and_its_epoch(self, leases: Leases) -> None:
        lease = await leases.acquire("batch_1", "w1", 10, now=100)
        assert lease is not None
        fence = leases.fence(lease)
        assert (fence.key, fence.epoch) == ("batch_1", 1)
        assert fence.table


async def _tagged(table: Table[Note], *rows: tuple[str, str, int, str]) -> None:
    for owner, record_id, created_at, tag in rows:
        assert await table.insert(owner, Note(id=record_id, created_at=created_at), tag=tag)


def _claimed(claims: list[tuple[str, Lease]]) -> list[tuple[str, str, int]]:
    return [(owner, lease.key, lease.epoch) for owner, lease in claims]


class ClaimConformance:
    """Bind ``tables`` and ``lease_tables`` (on one database) in a subclass."""

    @pytest.fixture
    async def leases(self, lease_tables: LeaseOpener) -> Leases:
        return await lease_tables("leases")

    @pytest.fixture
    async def batches(self, tables: TableOpener) -> Table[Note]:
        return await tables("batches")

    async def test_claim_takes_the_oldest_records_with_the_tags_up_to_the_limit(
        self, leases: Leases, batches: Table[Note]
    ) -> None:
        await _tagged(
            batches,
            ("alice", "b4", 4, "validating"),
            ("bob", "b1", 1, "in_progress"),
            ("alice", "b2", 2, "completed"),
            ("alice", "b3", 3, "validating"),
            ("bob", "b5", 5, "in_progress"),
        )
        claims = await leases.claim(batches, ["validating", "in_progress"], "w1", 10, now=100, limit=2)
        assert _claimed(claims) == [("bob", "b1", 1), ("alice", "b3", 1)]
        assert all(lease.holder == "w1" for _, lease in claims)
        assert await leases.holder("b3", now=105) == "w1"
        later = await leases.claim(batches, ["validating", "in_progress"], "w2", 10, now=101, limit=10)
        assert _claimed(later) == [("alice", "b4", 1), ("bob", "b5", 1)]
        assert await leases.claim(batches, ["validating", "in_progress"], "w3", 10, now=102, limit=10) == []
        assert await leases.claim(batches, [], "w3", 10, now=200, limit=10) == []
        assert await leases.claim(batches, ["completed"], "w3", 10, now=200, limit=0) == []

    async def test_claim_skips_live_leases_and_takes_expired_and_released_ones(
        self, leases: Leases, batches: Table[Note]
    ) -> None:
        await _tagged(batches, *(("alice", f"b{i}", i, "in_progress") for i in range(1, 5)))
        live = await leases.acquire("b1", "w0", 100, now=100)
        expired = await leases.acquire("b2", "w0", 5, now=100)
        delayed = await leases.acquire("b3", "w0", 100, now=100)
        assert live is not None and expired is not None and delayed is not None
        await leases.release(delayed, until=150, failed=True)
        claims = await leases.claim(batches, ["in_progress"], "w1", 100, now=110, limit=10)
        assert _claimed(claims) == [("alice", "b2", 2), ("alice", "b4", 1)]
        claims = await leases.claim(batches, ["in_progress"], "w2", 10, now=150, limit=10)
        assert _claimed(claims) == [("alice", "b3", 2)] and claims[0][1].failures == 1

    async def test_concurrent_claimers_take_every_record_once(self, leases: Leases, batches: Table[Note]) -> None:
        await _tagged(batches, *(("alice" if i % 2 else "bob", f"b{i:02d}", i, "validating") for i in range(30)))
        seen: list[str] = []
        for round_number in range(10):
            claims = await asyncio.gather(
                *(leases.claim(batches, ["validating"], f"w{i}", 60, now=100 + round_number, limit=4) for i in range(5))
            )
            keys = [lease.key for claimed in claims for _, lease in claimed]
            seen += keys
            if not keys:
                break
        assert sorted(seen) == [f"b{i:02d}" for i in range(30)]
        for claimed in claims:
            assert claimed == []


class FenceConformance:
    """Bind ``tables``, ``result_logs`` and ``lease_tables`` (on one database) in a subclass."""

    @pytest.fixture
    async def leases(self, lease_tables: LeaseOpener) -> Leases:
        return await lease_tables("leases")

    @pytest.fixture
    async def table(self, tables: TableOpener) -> Table[Note]:
        return await tables("batches")

    @pytest.fixture
    async def log(self, result_logs: LogOpener) -> ResultLog:
        return await result_logs("results")

    async def _takeover(self, leases: Leases) -> tuple[Lease, Lease]:
        first = await leases.acquire("b1", "w1", 10, now=100)
        second = await leases.acquire("b1", "w2", 10, now=200)
        assert first is not None and second is not None
        return first, second

    async def test_a_fenced_update_is_refused_once_another_holder_acquired(
        self, leases: Leases, table: Table[Note]
    ) -> None:
        await table.insert("alice", Note(id="b1", created_at=1, text="a\x00"), tag="in_progress")
        first = await leases.acquire("b1", "w1", 10, now=100)
        assert first is not None
        stored = await table.update("alice", "b1", {"counts": {"done": 1}}, fence=leases.fence(first))
        assert stored is not None and stored.version == 2
        second = await leases.acquire("b1", "w2", 10, now=200)
        assert second is not None
        for changes in ({"counts": {"done": 2}}, {"labels": ["x\x00"]}):
            with pytest.raises(LeaseLost) as lost:
                await table.update("alice", "b1", changes, tag="failed", fence=leases.fence(first))
            assert (lost.value.key, lost.value.epoch) == ("b1", 1)
        assert await table.get("alice", "b1") == stored
        assert [n.id for n in (await table.list("alice", tag="in_progress")).items] == ["b1"]
        stored = await table.update("alice", "b1", {"counts": {"done": 2}}, fence=leases.fence(second))
        assert stored is not None and (stored.value.counts.done, stored.version) == (2, 3)

    async def test_a_fenced_update_of_a_missing_row_is_refused_before_it_is_missed(
        self, leases: Leases, table: Table[Note]
    ) -> None:
        first, second = await self._takeover(leases)
        assert await table.update("alice", "b1", {"text": "x"}, fence=leases.fence(second)) is None
        with pytest.raises(LeaseLost):
            await table.update("alice", "b1", {"text": "x"}, fence=leases.fence(first))

    async def test_a_fenced_record_is_refused_once_another_holder_acquired(
        self, leases: Leases, log: ResultLog
    ) -> None:
        first = await leases.acquire("b1", "w1", 10, now=100)
        assert first is not None
        await log.record("alice", [result(1, batch_id="b1")], fence=leases.fence(first))
        second = await leases.acquire("b1", "w2", 10, now=200)
        assert second is not None
        with pytest.raises(LeaseLost):
            await log.record("alice", [result(2, batch_id="b1"), result(3, batch_id="b1")], fence=leases.fence(first))
        with pytest.raises(LeaseLost):
            await log.record("alice", [], fence=leases.fence(first))
        assert await log.done_lines("b1") == {1}
        await log.record("alice", [result(2, batch_id="b1")], fence=leases.fence(second))
        assert await log.done_lines("b1") == {1, 2}

    async def test_a_fence_holds_past_expiry_until_the_key_is_acquired_again(
        self, leases: Leases, table: Table[Note], log: ResultLog
    ) -> None:
        await table.insert("alice", Note(id="b1", created_at=1))
        lease = await leases.acquire("b1", "w1", 10, now=100)
        assert lease is not None
        assert await leases.holder("b1", now=500) is None
        assert await table.update("alice", "b1", {"text": "late"}, fence=leases.fence(lease)) is not None
        await log.record("alice", [result(1, batch_id="b1")], fence=leases.fence(lease))
        assert await log.done_lines("b1") == {1}

    async def test_a_fence_on_a_key_never_acquired_is_refused(
        self, leases: Leases, table: Table[Note], log: ResultLog
    ) -> None:
        await table.insert("alice", Note(id="b1", created_at=1))
        fence = leases.fence(Lease("b1", "w1", epoch=1))
        with pytest.raises(LeaseLost):
            await table.update("alice", "b1", {"text": "x"}, fence=fence)
        with pytest.raises(LeaseLost):
            await log.record("alice", [result(1, batch_id="b1")], fence=fence)
        assert await log.done_lines("b1") == set()
