"""faust commits only offsets that were acked, also while it rebalances, and offsets that
hold no record (commit markers) do not hold commits back."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from llmflow.services.worker import commits

TP0, TP1 = TP("in", 0), TP("in", 1)


def _consumer(
    acked: list[int], committed: int | None, read: list[int], floor: int | None = None
) -> Any:
    consumer = SimpleNamespace(
        _acked=defaultdict(list, {TP0: sorted(acked)}),
        _acked_index=defaultdict(set, {TP0: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {TP0: committed}),
        _unacked_messages=[],
    )
    commits.reads(consumer)[TP0] = set(read)
    if floor is not None:
        commits.floors(consumer)[TP0] = floor
    return consumer


@pytest.mark.parametrize(
    ("acked", "committed", "read", "floor", "expected"),
    [
        ([10, 11, 12], 10, [10, 11, 12], None, 13),  # contiguous from the commit
        ([11, 12], 10, [10, 11, 12], None, None),  # 10 was read, never acked (faust: 13)
        ([10, 12], 10, [10, 11, 12, 13], None, 11),  # up to the first read and not acked
        ([11, 12], 10, [11, 12], None, 13),  # 10 never read: a commit marker
        ([0, 1], None, [0, 1], None, None),  # where the partition starts is not known yet
        ([0, 1], None, [0, 1], 0, 2),  # a partition never committed, read from its start
        ([11, 12], None, [10, 11, 12], 10, None),  # revoked: faust forgot the commit
        ([10, 11, 12], None, [10, 11, 12], 10, 13),
        ([5, 6], None, [5, 6], 10, None),  # acks below the group's commit never move it back
        ([5, 6, 10, 11], None, [5, 6, 10, 11], 10, 12),
    ],
)
def test_nothing_is_committed_past_a_record_read_and_not_acked(
    acked: list[int], committed: int | None, read: list[int], floor: int | None, expected: int
) -> None:
    consumer = _consumer(acked, committed, read, floor)
    assert commits._new_offset(consumer, TP0) == expected


def test_what_is_committed_is_forgotten() -> None:
    consumer = _consumer([10, 11, 13], 10, [10, 11, 12, 13])
    assert commits._new_offset(consumer, TP0) == 12
    assert consumer._acked[TP0] == [13] and consumer._acked_index[TP0] == {13}
    assert commits.reads(consumer)[TP0] == {12, 13}


def test_the_last_commit_outlives_the_revocation(monkeypatch: pytest.MonkeyPatch) -> None:
    async def faust_revoke(self: Any, revoked: set[TP]) -> None:
        for tp in revoked:
            self._committed_offset.pop(tp, None)
            self._acked.pop(tp, None)

    monkeypatch.setattr(commits, "_faust_on_partitions_revoked", faust_revoke)
    consumer = _consumer([], 10, [10, 11, 12, 13])
    asyncio.run(commits._on_partitions_revoked(consumer, {TP0}))
    assert consumer._committed_offset[TP0] is None
    consumer._acked[TP0].extend([12, 13])  # events in flight ack after the revocation
    assert commits._new_offset(consumer, TP0) is None  # 10 and 11 were dropped: no commit


def test_floors_are_read_back_with_the_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    changelog = TP("app-table-changelog", 0)

    async def faust_seek(self: Any) -> Mapping[TP, int | None]:
        return {TP0: None, TP1: 7, changelog: None}

    async def earliest_offsets(*tps: TP) -> Mapping[TP, int]:
        return {tp: 3 for tp in tps}

    sought: dict[TP, int] = {}

    async def seek_wait(partitions: Mapping[TP, int]) -> None:
        sought.update(partitions)

    monkeypatch.setattr(commits, "_faust_seek_to_committed", faust_seek)
    topics = SimpleNamespace(acks_enabled_for=lambda topic: topic == "in")
    consumer = SimpleNamespace(
        earliest_offsets=earliest_offsets, seek_wait=seek_wait, app=SimpleNamespace(topics=topics)
    )
    asyncio.run(commits._seek_to_committed(consumer))
    assert commits.floors(consumer) == {TP0: 3, TP1: 7, changelog: 3}
    # Never committed: read again from the start (aiokafka leaves it where it was).
    assert sought == {TP0: 3}


def test_offsets_read_are_noted_for_input_topics_only(monkeypatch: pytest.MonkeyPatch) -> None:
    changelog = TP("app-table-changelog", 0)

    async def faust_getmany(self: Any, active: Any, wait_s: float) -> Any:
        return {TP0: [SimpleNamespace(offset=4)], changelog: [SimpleNamespace(offset=9)]}

    monkeypatch.setattr(commits, "_faust_getmany", faust_getmany)
    topics = SimpleNamespace(acks_enabled_for=lambda topic: topic == "in")
    consumer = SimpleNamespace(app=SimpleNamespace(topics=topics))
    asyncio.run(commits._getmany(consumer, None, 1.0))
    assert commits.reads(consumer) == {TP0: {4}}


def test_an_assignment_waits_for_the_commits_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    async def faust_assign(self: Any, assigned: set[TP], generation_id: int = 0) -> None:
        pass

    monkeypatch.setattr(commits, "_faust_on_partitions_assigned", faust_assign)
    consumer = _consumer([55, 80, 81], None, [55, 80, 81], floor=50)  # 50: an old floor
    asyncio.run(commits._on_partitions_assigned(consumer, {TP0}))
    # Another worker may have committed 80 meanwhile: committing 55 would take it back.
    assert commits._new_offset(consumer, TP0) is None


def test_a_record_dropped_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(commits, "clock", lambda: now[0])
    sought: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    async def commit_rounds() -> None:
        consumer = _consumer([10, 12, 13], 10, [10, 11, 12, 13])
        consumer.seek = seek
        in_flight = SimpleNamespace(tp=TP0, offset=11)
        consumer._unacked_messages.append(in_flight)  # an agent has 11: no seek
        for _ in range(3):
            assert commits._new_offset(consumer, TP0) == 11
            now[0] += commits.REREAD_AFTER_S
        consumer._committed_offset[TP0] = 11  # committed up to 11 meanwhile
        consumer._unacked_messages.clear()  # 11 was dropped (its agent never acks it)
        consumer._acked[TP0].append(14)
        for _ in range(3):
            assert commits._new_offset(consumer, TP0) is None  # 11 holds the commit back
            now[0] += commits.REREAD_AFTER_S / 2
            await asyncio.sleep(0)

    asyncio.run(commit_rounds())
    assert sought == [(TP0, 11)]  # once it was out of flight for REREAD_AFTER_S
