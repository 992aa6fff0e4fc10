"""Group commit: one write of a key at a time; what is asked while one is in flight shares
the next, and nobody returns before a write holding their change is acked."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from llmflow.services.worker.group_commit import GroupCommit


class Key:
    """A key's state (a set of changes) and its writes, acked when the test says so."""

    def __init__(self) -> None:
        self.changes: set[int] = set()
        self.writes: list[frozenset[int]] = []  # what each write held, in issue order
        self.acks: list[asyncio.Future[None]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.commit = GroupCommit(self.write)

    async def write(self) -> None:
        self.writes.append(frozenset(self.changes))  # the snapshot, before any await
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await ack
        finally:
            self.in_flight -= 1

    async def change(self, n: int) -> None:
        self.changes.add(n)
        await self.commit.request()

    async def ack(self, n: int, error: Exception | None = None) -> None:
        """Ack write `n` (0-based), then let the waiters run."""
        for _ in range(5):  # the write of a request made a moment ago starts in a task
            if len(self.acks) > n:
                break
            await asyncio.sleep(0)
        if error is None:
            self.acks[n].set_result(None)
        else:
            self.acks[n].set_exception(error)
        for _ in range(5):
            await asyncio.sleep(0)


async def test_a_lone_change_is_written_at_once_and_returns_with_the_ack() -> None:
    key = Key()
    change = asyncio.create_task(key.change(1))
    await asyncio.sleep(0.01)
    assert key.writes == [frozenset({1})] and not change.done()
    await key.ack(0)
    assert change.done() and key.commit.idle


async def test_changes_made_during_a_write_share_the_next_one() -> None:
    key = Key()
    first = asyncio.create_task(key.change(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(key.writes) == 1
    waiting = [asyncio.create_task(key.change(n)) for n in range(1, 11)]
    await asyncio.sleep(0.01)
    assert len(key.writes) == 1  # one write at a time
    assert not any(t.done() for t in waiting)
    await key.ack(0)
    assert first.done() and not any(t.done() for t in waiting)  # the first write lacks them
    assert key.writes[1] == frozenset(range(11))  # ten changes, one more record
    await key.ack(1)
    assert all(t.done() for t in waiting)
    assert len(key.writes) == 2 and key.most_in_flight == 1


async def test_a_change_returns_only_once_a_write_holding_it_is_acked() -> None:
    key = Key()
    done_after: dict[int, int] = {}  # change -> writes acked when it returned

    async def change(n: int) -> None:
        await key.change(n)
        done_after[n] = sum(1 for ack in key.acks if ack.done())

    tasks = []
    for n in range(30):
        tasks.append(asyncio.create_task(change(n)))
        await asyncio.sleep(0)
        if n % 7 == 6:
            await key.ack(len(key.acks) - 1)
    while not all(t.done() for t in tasks):
        await key.ack(len(key.acks) - 1)
    for n, acked in done_after.items():
        assert any(n in held for held in key.writes[:acked]), (n, acked)
    # Writes were issued in order: each holds all that the one before it held.
    assert all(a <= b for a, b in itertools.pairwise(key.writes))
    assert len(key.writes) < 30


async def test_a_failed_write_fails_its_own_waiters_and_the_next_goes_on() -> None:
    key = Key()
    first = asyncio.create_task(key.change(0))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(key.change(1))
    await asyncio.sleep(0.01)
    await key.ack(0, RuntimeError("broker down"))
    with pytest.raises(RuntimeError, match="broker down"):
        await first
    assert not second.done()
    await key.ack(1)
    await second
    assert key.writes[1] == frozenset({0, 1})


async def test_a_cancelled_waiter_does_not_cancel_the_write_of_the_others() -> None:
    key = Key()
    impatient = asyncio.create_task(key.change(0))
    patient = asyncio.create_task(key.change(1))
    await asyncio.sleep(0.01)
    impatient.cancel()
    await asyncio.sleep(0)
    await key.ack(0)
    await patient
    assert impatient.cancelled() and key.writes == [frozenset({0, 1})]
