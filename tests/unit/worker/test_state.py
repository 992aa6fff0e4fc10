"""Table state: writes awaited until acked, and bounded by the events not yet committed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.worker import state
from llmflow.services.worker.state import TableAnsweredMarks, TablePaidCalls


class FakeTable:
    """A faust table's local data and changelog; writes are acked when `ack()` says so."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.changelog: list[tuple[int, str, Any]] = []
        self.unacked: list[asyncio.Future[None]] = []

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def __iter__(self) -> Any:
        return iter(self.data)

    def get(self, key: str) -> Any:
        return self.data.get(key)

    @property
    def changelog_topic(self) -> FakeTable:
        return self

    key_serializer = value_serializer = "json"

    async def send(
        self, key: str, value: Any, partition: int, **serializers: str
    ) -> asyncio.Future[None]:
        return self.send_changelog(partition, key, value)

    def send_changelog(
        self, partition: int, key: str, value: Any, value_serializer: str | None = None
    ) -> asyncio.Future[None]:
        self.changelog.append((partition, key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.unacked.append(future)
        return future

    def ack(self) -> None:
        for future in self.unacked:
            if not future.done():
                future.set_result(None)
        self.unacked.clear()


def _at(monkeypatch: pytest.MonkeyPatch, partition: int, offset: int) -> None:
    event = SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset))
    monkeypatch.setattr(state, "current_event", lambda: event)


def _answer(call_id: str) -> ModelCallResult:
    return ModelCallResult(
        name="classify",
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


async def test_an_answer_is_stored_only_once_the_broker_acked_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = FakeTable()
    paid = TablePaidCalls(table)
    _at(monkeypatch, 2, 7)
    put = asyncio.create_task(paid.put(_answer("c-1")))
    await asyncio.sleep(0.01)
    assert not put.done()  # waiting for the ack: a kill -9 now may pay again, later not
    table.ack()
    await put
    assert table.changelog == [(2, "c-1", _answer("c-1").model_dump(mode="json"))]
    assert paid.get("c-1") == _answer("c-1")


async def test_marks_wait_for_the_ack_and_drop_what_is_no_longer_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    committed: dict[int, int] = {}
    answered_table, paid_table = FakeTable({"0:3": 1, "1:9": 1}), FakeTable()
    paid = TablePaidCalls(paid_table)
    marks = TableAnsweredMarks(answered_table, committed.get, paid)
    for offset in (4, 5, 6):
        _at(monkeypatch, 0, offset)
        put = asyncio.create_task(paid.put(_answer(f"c-{offset}")))
        await asyncio.sleep(0)
        paid_table.ack()
        await put
        mark = asyncio.create_task(marks.mark(0, offset))
        await asyncio.sleep(0.01)
        assert not mark.done() and marks.seen(0, offset)
        answered_table.ack()
        await mark
        assert f"c-{offset}" not in paid_table.data  # answered: its answers are dropped
        if offset == 5:
            committed[0] = 6  # the group committed up to offset 5
    # The mark restored from an earlier owner (0:3) and 0:4, 0:5 are below the commit.
    assert set(answered_table.data) == {"0:6", "1:9"}
    tombstones = [key for _, key, value in answered_table.changelog if value is None]
    assert tombstones == ["0:3", "0:4", "0:5"]
    assert [value is None for _, key, value in paid_table.changelog if key == "c-4"] == [
        False,
        True,
    ]


async def test_a_redelivered_event_drops_answers_stored_by_its_first_delivery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paid_table = FakeTable({"c-1": _answer("c-1").model_dump(mode="json")})
    paid = TablePaidCalls(paid_table)
    answered_table = FakeTable()
    marks = TableAnsweredMarks(answered_table, lambda partition: None, paid)
    _at(monkeypatch, 1, 0)
    assert paid.get("c-1") == _answer("c-1") and paid.get("c-2") is None
    mark = asyncio.create_task(marks.mark(1, 0))
    await asyncio.sleep(0)
    answered_table.ack()
    await mark
    assert paid_table.data == {}
