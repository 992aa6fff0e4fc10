"""Table state: writes awaited until acked, group-committed, and bounded by the events not
yet committed; spend written once per flush."""

from __future__ import annotations

import asyncio
import itertools
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any

import pytest

from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.worker import state
from llmflow.services.worker.budgets import Budget, SpendView, spend_key
from llmflow.services.worker.state import (
    SpendTable,
    TableAnsweredMarks,
    TableBudgets,
    TablePaidCalls,
)


class FakeTable:
    """A faust table's local data and changelog; writes are acked when `ack()` says so."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.changelog: list[tuple[int, str, Any]] = []
        self.unacked: list[asyncio.Future[None]] = []
        self.fail: Exception | None = None

    @property
    def changelog_topic(self) -> FakeTable:
        return self

    key_serializer = value_serializer = "json"

    async def send(
        self, key: str, value: Any, partition: int, **serializers: str
    ) -> asyncio.Future[None]:
        if self.fail is not None:
            raise self.fail
        return self.send_changelog(partition, key, value)

    def send_changelog(
        self, partition: int, key: str, value: Any, value_serializer: str | None = None
    ) -> asyncio.Future[None]:
        self.changelog.append((partition, key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if value is None:
            future.set_result(None)  # tombstones are not awaited
        else:
            self.unacked.append(future)
        return future

    async def ack(self) -> None:
        """Ack every write sent so far, then let those waiting on them run."""
        for future in self.unacked:
            if not future.done():
                future.set_result(None)
        self.unacked.clear()
        for _ in range(10):
            await asyncio.sleep(0)

    def records(self, key: str) -> list[Any]:
        return [value for _, k, value in self.changelog if k == key]


_position: ContextVar[tuple[int, int]] = ContextVar("position")


@pytest.fixture(autouse=True)
def _events(monkeypatch: pytest.MonkeyPatch) -> None:
    """`current_event()` is the event whose position the running task set with `_at`."""

    def current_event() -> Any:
        partition, offset = _position.get()
        return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset))

    monkeypatch.setattr(state, "current_event", current_event)


def _at(partition: int, offset: int) -> None:
    _position.set((partition, offset))


async def _in_event(partition: int, offset: int, work: Any) -> Any:
    _at(partition, offset)
    return await work()


def _answer(call_id: str, name: str = "classify") -> ModelCallResult:
    return ModelCallResult(
        name=name,
        kind="chat",
        call_id=call_id,
        model="m",
        endpoint="default",
        prompt_version="1",
        answer="yes",
        tokens_in=3,
        tokens_out=1,
        latency_ms=1.0,
        attempts=1,
        cost_usd=0.0,
    )


def _stored(*call_ids: str) -> dict[str, Any]:
    return {c: _answer(c).model_dump(mode="json") for c in call_ids}


# --- paid answers ---------------------------------------------------------------------------


async def test_an_answer_is_stored_only_once_the_broker_acked_it() -> None:
    table = FakeTable()
    paid = TablePaidCalls(table)
    _at(2, 7)
    put = asyncio.create_task(paid.put(_answer("c-1")))
    await asyncio.sleep(0.01)
    assert not put.done()  # waiting for the ack: a kill -9 now may pay again, later not
    await table.ack()
    await put
    assert table.changelog == [(2, "2:7", _stored("c-1"))]  # one record for the event
    assert paid.get("c-1") == _answer("c-1")


async def test_answers_of_one_event_that_arrive_together_share_records() -> None:
    table = FakeTable()
    paid = TablePaidCalls(table)
    _at(0, 3)
    first = asyncio.create_task(paid.put(_answer("c-1")))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(paid.put(_answer(f"c-{n}"))) for n in (2, 3, 4)]
    await asyncio.sleep(0.01)
    assert len(table.changelog) == 1  # the event's next record waits for the first
    await table.ack()
    assert first.done() and not any(t.done() for t in later)  # their answers not yet stored
    assert table.records("0:3") == [_stored("c-1"), _stored("c-1", "c-2", "c-3", "c-4")]
    await table.ack()
    assert all(t.done() for t in later)
    assert len(table.changelog) == 2  # four answers, two records
    # Another event's answers are written on their own, at once.
    other = asyncio.create_task(_in_event(1, 3, lambda: paid.put(_answer("d-1"))))
    await asyncio.sleep(0.01)
    assert table.records("1:3") == [_stored("d-1")]
    await table.ack()
    await other


async def test_a_redelivered_event_finds_its_answers_and_keeps_them_in_its_next_record() -> None:
    # Restored from the changelog: the first delivery stored one of the event's answers.
    table = FakeTable({"1:0": _stored("c-1")})
    paid = TablePaidCalls(table)
    _at(1, 0)
    assert paid.get("c-1") == _answer("c-1") and paid.get("c-2") is None
    put = asyncio.create_task(paid.put(_answer("c-2")))
    await asyncio.sleep(0.01)
    await table.ack()
    await put
    assert table.records("1:0") == [_stored("c-1", "c-2")]  # a crash now loses neither
    _at(1, 1)
    assert paid.get("c-1") is None  # another event's record is not this one's


async def test_answers_stored_by_call_id_before_an_upgrade_are_reused_and_dropped() -> None:
    table = FakeTable(_stored("c-1"))  # the older layout: one key per answer
    paid = TablePaidCalls(table)
    marks = TableAnsweredMarks(FakeTable(), lambda partition: None, paid)
    _at(1, 0)
    assert paid.get("c-1") == _answer("c-1")
    put = asyncio.create_task(paid.put(_answer("c-2")))
    await asyncio.sleep(0.01)
    await table.ack()
    await put
    mark = asyncio.create_task(marks.mark(1, 0))
    await asyncio.sleep(0.01)
    await marks._table.ack()
    await mark
    assert table.data == {}
    tombstones = sorted(key for _, key, value in table.changelog if value is None)
    assert tombstones == ["1:0", "c-1"]


async def test_an_answered_event_drops_its_answers_with_one_tombstone() -> None:
    paid_table, answered_table = FakeTable({"1:0": _stored("c-1")}), FakeTable()
    paid = TablePaidCalls(paid_table)
    marks = TableAnsweredMarks(answered_table, lambda partition: None, paid)
    _at(1, 0)
    assert paid.get("c-1") is not None  # reused by this delivery
    puts = [asyncio.create_task(paid.put(_answer(f"c-{n}"))) for n in (2, 3)]
    await asyncio.sleep(0.01)
    await paid_table.ack()
    await paid_table.ack()
    await asyncio.gather(*puts)
    mark = asyncio.create_task(marks.mark(1, 0))
    await asyncio.sleep(0.01)
    assert "1:0" in paid_table.data  # not before the mark is durable
    await answered_table.ack()
    await mark
    assert paid_table.data == {} and paid.events == 0
    assert [key for _, key, value in paid_table.changelog if value is None] == ["1:0"]


# --- answered marks -------------------------------------------------------------------------


async def test_a_mark_is_one_record_per_partition_acked_before_it_returns() -> None:
    table = FakeTable()
    marks = TableAnsweredMarks(table, lambda partition: None, None)
    mark = asyncio.create_task(marks.mark(0, 4))
    await asyncio.sleep(0.01)
    assert not mark.done() and marks.seen(0, 4)
    await table.ack()
    await mark
    assert table.changelog == [(0, "0", [[4, 4]])]
    assert not marks.seen(0, 5) and not marks.seen(1, 4)


async def test_concurrent_marks_share_writes_and_each_waits_for_one_holding_it() -> None:
    table = FakeTable()
    marks = TableAnsweredMarks(table, lambda partition: None, None)
    first = asyncio.create_task(marks.mark(0, 10))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(marks.mark(0, o)) for o in (12, 11, 14, 13)]
    other = asyncio.create_task(marks.mark(1, 10))  # another partition: its own record
    await asyncio.sleep(0.01)
    assert [key for _, key, _ in table.changelog] == ["0", "1"]
    await table.ack()
    assert first.done() and other.done() and not any(t.done() for t in later)
    assert table.records("0") == [[[10, 10]], [[10, 14]]]
    await table.ack()
    assert all(t.done() for t in later)
    assert len(table.records("0")) == 2  # five marks, two records


async def test_the_latest_record_holds_every_offset_marked_before_it() -> None:
    table = FakeTable()
    marks = TableAnsweredMarks(table, lambda partition: None, None)
    tasks = []
    for offset in range(100):
        tasks.append(asyncio.create_task(marks.mark(0, offset ^ 1)))  # out of order
        if offset % 9 == 0:
            await table.ack()
    while not all(t.done() for t in tasks):
        await table.ack()
    records = table.records("0")
    assert records[-1] == [[0, 99]] and len(records) < 30
    held = [set().union(*(range(a, b + 1) for a, b in r)) for r in records]
    assert all(a <= b for a, b in itertools.pairwise(held))  # written in order


async def test_marks_below_the_commit_are_left_out_and_older_keys_dropped() -> None:
    committed: dict[int, int] = {}
    # Restored: a record of the new layout and marks of the older one (one key each).
    table = FakeTable({"0": [[1, 2]], "0:3": 1, "0:8": 1, "1:9": 1})
    marks = TableAnsweredMarks(table, committed.get, None)
    assert all(marks.seen(0, o) for o in (1, 2, 3, 8)) and marks.seen(1, 9)
    assert not marks.seen(0, 4)
    mark = asyncio.create_task(marks.mark(0, 4))
    await asyncio.sleep(0.01)
    await table.ack()
    await mark
    assert table.records("0") == [[[1, 2], [4, 4]]]  # the older keys are kept apart
    committed[0] = 5  # the group committed up to offset 4
    mark = asyncio.create_task(marks.mark(0, 6))
    await asyncio.sleep(0.01)
    await table.ack()
    await mark
    assert table.records("0")[-1] == [[6, 6]]
    assert [key for _, key, value in table.changelog if value is None] == ["0:3"]
    assert set(table.data) == {"0", "0:8", "1:9"}
    assert marks.seen(0, 8) and not marks.seen(0, 3) and not marks.seen(0, 1)


async def test_marks_are_read_again_after_a_rebalance() -> None:
    table = FakeTable()
    marks = TableAnsweredMarks(table, lambda partition: None, None)
    mark = asyncio.create_task(marks.mark(0, 1))
    await asyncio.sleep(0.01)
    await table.ack()
    await mark
    # Another owner had the partition meanwhile; faust restored its record.
    table.data["0"] = [[1, 5]]
    assert not marks.seen(0, 5)
    marks.forget_partitions()
    assert marks.seen(0, 5)
    mark = asyncio.create_task(marks.mark(0, 7))
    await asyncio.sleep(0.01)
    await table.ack()
    await mark
    assert table.records("0")[-1] == [[1, 5], [7, 7]]


async def test_an_unreadable_record_is_ignored() -> None:
    table = FakeTable({"0": "garbage"})
    marks = TableAnsweredMarks(table, lambda partition: None, None)
    assert not marks.seen(0, 1)


# --- spend ----------------------------------------------------------------------------------


def _budgets(table: FakeTable, view: SpendView) -> tuple[SpendTable, TableBudgets]:
    spend = SpendTable(table, view)
    return spend, TableBudgets({"acme": Budget(usd=1.0)}, spend, view)


async def test_charges_count_at_once_and_are_written_once_per_flush() -> None:
    table, view = FakeTable(), SpendView()
    spend, budgets = _budgets(table, view)
    _at(0, 1)
    for _ in range(3):
        budgets.charge("acme", 0.25)
    _at(1, 1)
    budgets.charge("acme", 0.125)
    budgets.charge("bob", 0.0)  # nothing spent, nothing written
    assert table.changelog == []  # nothing written per call
    period = budgets._period("acme")[1]
    assert view.total("acme", period) == pytest.approx(0.875)
    assert budgets.over_budget("acme") is None
    flush = asyncio.create_task(spend.flush())
    await asyncio.sleep(0.01)
    assert not flush.done()  # waits for the acks
    await table.ack()
    await flush
    assert sorted(table.changelog) == [
        (0, spend_key("acme", period, 0), 0.75),
        (1, spend_key("acme", period, 1), 0.125),
    ]
    await spend.flush()  # nothing changed since: nothing written
    assert len(table.changelog) == 2
    _at(0, 2)
    budgets.charge("acme", 0.25)
    verdict = budgets.over_budget("acme")  # this worker parks the tenant at once
    assert verdict is not None and verdict.spent_usd == pytest.approx(1.125)
    flush = asyncio.create_task(spend.flush())
    await asyncio.sleep(0.01)
    await table.ack()
    await flush
    assert table.changelog[-1] == (0, spend_key("acme", period, 0), 1.0)


async def test_spend_a_flush_could_not_write_is_written_by_the_next() -> None:
    table, view = FakeTable(), SpendView()
    spend, budgets = _budgets(table, view)
    _at(0, 1)
    budgets.charge("acme", 0.5)
    table.fail = RuntimeError("broker down")
    with pytest.raises(RuntimeError):
        await spend.flush()
    assert spend.dirty == 1
    table.fail = None
    budgets.charge("acme", 0.25)
    flush = asyncio.create_task(spend.flush())
    await asyncio.sleep(0.01)
    await table.ack()
    await flush
    assert [value for _, _, value in table.changelog] == [0.75] and spend.dirty == 0


async def test_spend_is_flushed_every_interval() -> None:
    table, view = FakeTable(), SpendView()
    spend, budgets = _budgets(table, view)
    flushing = asyncio.create_task(spend.flush_every(0.01))
    try:
        _at(0, 1)
        for _ in range(5):
            budgets.charge("acme", 0.1)
        for _ in range(20):
            await asyncio.sleep(0.01)
            await table.ack()
            if table.changelog:
                break
        assert [value for _, _, value in table.changelog] == [pytest.approx(0.5)]
    finally:
        flushing.cancel()
