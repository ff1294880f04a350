"""The storage conformance suite: every Table backend (SQLite, memory, Postgres) must pass it unchanged.

A backend's test module binds the ``tables`` fixture (an async factory ``name -> Table[Note]``) and inherits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from pydantic import BaseModel

from llama_batches.api import Order
from llama_batches.storage import Leases, RequestResult, ResultLog, ResultTotals, Table


class Note(BaseModel):
    """A record as providers store them: an id, a creation time and a payload."""

    id: str
    created_at: int
    text: str = ""


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
    """Bind ``lease_tables`` (an async factory ``name -> Leases``) in a subclass."""

    @pytest.fixture
    async def leases(self, lease_tables: LeaseOpener) -> Leases:
        return await lease_tables("leases")

    async def test_a_free_key_is_taken_and_held(self, leases: Leases) -> None:
        assert await leases.acquire("batch_1", "w1", 10, now=100)
        assert not await leases.acquire("batch_1", "w2", 10, now=105)
        assert await leases.holder("batch_1", now=105) == "w1"
        assert await leases.acquire("batch_1", "w1", 10, now=105)  # the holder may take it again (extends it)
        assert await leases.holder("batch_1", now=112) == "w1"

    async def test_an_expired_lease_is_taken_over_and_the_old_holder_loses_it(self, leases: Leases) -> None:
        await leases.acquire("batch_1", "w1", 10, now=100)
        assert await leases.holder("batch_1", now=111) is None
        assert await leases.acquire("batch_1", "w2", 10, now=111)
        assert not await leases.renew("batch_1", "w1", 10, now=112)
        assert await leases.renew("batch_1", "w2", 10, now=112)
        assert await leases.holder("batch_1", now=121) == "w2"

    async def test_release_frees_the_key_only_for_its_holder(self, leases: Leases) -> None:
        await leases.acquire("batch_1", "w1", 10, now=100)
        await leases.release("batch_1", "w2")
        assert await leases.holder("batch_1", now=101) == "w1"
        await leases.release("batch_1", "w1")
        assert await leases.acquire("batch_1", "w2", 10, now=101)

    async def test_concurrent_acquires_make_one_holder(self, leases: Leases) -> None:
        won = await asyncio.gather(*(leases.acquire("batch_1", f"w{i}", 10, now=100) for i in range(20)))
        assert won.count(True) == 1
        assert await leases.holder("batch_1", now=101) == f"w{won.index(True)}"

    async def test_keys_are_independent(self, leases: Leases) -> None:
        assert await leases.acquire("batch_1", "w1", 10, now=100)
        assert await leases.acquire("batch_2", "w2", 10, now=100)
        assert not await leases.renew("batch_2", "w1", 10, now=101)
