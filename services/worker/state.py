"""Worker state in faust tables: changelogged to Kafka, co-partitioned with the input.

Each table is written only while processing an event of the partition it belongs to (or,
for spend, on behalf of such events), so the owner of a partition is the only writer of its
part, and a worker that takes the partition over (rebalance, crash) recovers that part
before it processes any event.

Writes that protect money and duplicates are awaited until the broker acked them
(`table[key] = value` would leave them in faust's producer buffer, lost by a kill -9): an
answer is durable before the event goes on, an answered mark before the event is acked.
Both are group-committed (`group_commit`): one record per event holds all its answers, one
record per partition all its answered offsets, and what arrives while a record of the same
key is being written goes into the next, so concurrent events and calls share writes.
What the state holds is bounded by the events not yet committed, not by the events seen:
an event's answers are deleted once its answered mark is durable, and a partition's record
drops the offsets the consumer committed past each time it is written (the changelogs are
compacted, so older records and deletes shrink them).

Spend is not awaited per call: totals are kept in memory and written once per flush
(`SpendTable`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from faust.streams import current_event

from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.worker.budgets import Budget, SpendView, period_key, spend_key
from llmflow.services.worker.group_commit import GroupCommit
from llmflow.services.worker.offsets import OffsetRanges
from llmflow.services.worker.ports import OverBudget

log = logging.getLogger(__name__)

# partition -> the next offset the group will read from it after a restart, if known
Committed = Callable[[int], int | None]

# Compaction settings of the answered/paid changelogs: their keys are short-lived or
# rewritten often, so segments roll often and tombstones go soon, which keeps recovery
# after a crash short.
CHANGELOG_CONFIG = {
    "segment.ms": str(10 * 60_000),
    "delete.retention.ms": str(10 * 60_000),
    "min.cleanable.dirty.ratio": "0.1",
}


async def send(table: Any, partition: int, key: str, value: Any) -> Awaitable[Any]:
    """`table[key] = value`; returns the write's delivery, to await for the broker's ack.
    Sent directly, not through faust's producer buffer, which other writes may keep full.
    `value` is serialised by the time this returns: the caller may change it afterwards."""
    table.data[key] = value
    delivery: Awaitable[Any] = await table.changelog_topic.send(
        key=key,
        value=value,
        partition=partition,
        key_serializer=table.key_serializer,
        value_serializer=table.value_serializer,
    )
    return delivery


async def write(table: Any, partition: int, key: str, value: Any) -> None:
    """`table[key] = value`, returning once the changelog write is acked."""
    await (await send(table, partition, key, value))


def delete(table: Any, partition: int, key: str) -> None:
    """`del table[key]`. Not awaited: a tombstone lost in a crash leaves one stale key.
    Sent directly too: while faust's producer buffer holds more than 100 records, faust
    delivers no record to any agent until it has drained, so a burst of tombstones there
    would stall the intake."""
    table.data.pop(key, None)
    task = asyncio.get_running_loop().create_task(_tombstone(table, partition, key))
    _tombstones.add(task)
    task.add_done_callback(_tombstones.discard)


_tombstones: set[asyncio.Task[None]] = set()  # in flight: a task nobody holds may vanish


async def _tombstone(table: Any, partition: int, key: str) -> None:
    try:
        await table.changelog_topic.send(
            key=key,
            value=None,
            partition=partition,
            key_serializer=table.key_serializer,
            value_serializer="raw",
        )
    except Exception as exc:  # the producer stopped: one stale key, no harm
        log.info("tombstone of %s not sent: %s", key, exc)


def _event_position() -> tuple[int, int]:
    event = current_event()
    assert event is not None, "table state is used inside stream processing"
    return event.message.partition, event.message.offset


def event_key(partition: int, offset: int) -> str:
    """The key of an event's record: its place in the input topic."""
    return f"{partition}:{offset}"


@dataclass(eq=False)
class _EventAnswers:
    """One event's answers, as its record holds them (by call id), and how they are written."""

    answers: dict[str, Any]
    commit: GroupCommit | None = None
    legacy: set[str] = field(default_factory=set)
    """Keys of answers stored by call id (an older layout) that this event reused."""


class TablePaidCalls:
    """Answers paid for, one record per event (`"<partition>:<offset>"` -> {call id: answer}),
    kept from the moment a call is answered until its event is.

    Call ids are derived from the event id, so an answer is only ever reused by its own
    event: looking it up in the current event's record is enough. Records of the older
    layout, one answer per call id, are still read (an event redelivered after an upgrade
    reuses them) and deleted with their event's record.
    """

    def __init__(self, table: Any) -> None:
        self._table = table
        self._events: dict[tuple[int, int], _EventAnswers] = {}

    def get(self, call_id: str) -> ModelCallResult | None:
        position = _event_position()
        event = self._events.get(position)
        answers = event.answers if event is not None else self._stored(*position)
        stored = answers.get(call_id)
        if stored is None:
            stored = self._table.data.get(call_id)  # stored by call id, before the upgrade
            if stored is None:
                return None
            self._event(*position).legacy.add(call_id)
        return ModelCallResult.model_validate(stored)

    async def put(self, result: ModelCallResult) -> None:
        """Returns once a record of the event holding `result` is acked."""
        event = self._event(*_event_position())
        event.answers[result.call_id] = result.model_dump(mode="json")
        assert event.commit is not None
        await event.commit.request()

    def forget(self, partition: int, offset: int) -> None:
        """The event at `partition`/`offset` is answered for good: drop its answers."""
        event = self._events.pop((partition, offset), None)
        key = event_key(partition, offset)
        if event is not None or key in self._table.data:
            delete(self._table, partition, key)
        for call_id in event.legacy if event is not None else ():
            delete(self._table, partition, call_id)

    @property
    def events(self) -> int:
        """Events with answers held in memory (answered ones are forgotten)."""
        return len(self._events)

    def _stored(self, partition: int, offset: int) -> dict[str, Any]:
        """The event's record as restored from the changelog (an earlier delivery's)."""
        stored = self._table.data.get(event_key(partition, offset))
        return stored if isinstance(stored, dict) else {}

    def _event(self, partition: int, offset: int) -> _EventAnswers:
        event = self._events.get((partition, offset))
        if event is None:
            # Starts from the restored record: every write holds all the event's answers.
            event = _EventAnswers(dict(self._stored(partition, offset)))
            key = event_key(partition, offset)

            async def write_answers() -> None:
                await write(self._table, partition, key, dict(event.answers))

            event.commit = GroupCommit(write_answers)
            self._events[(partition, offset)] = event
        return event


@dataclass(eq=False)
class _PartitionMarks:
    """A partition's answered offsets not yet committed, and how its record is written."""

    offsets: OffsetRanges
    legacy: list[int]
    """Offsets marked under their own key (`"<partition>:<offset>"`, an older layout),
    restored from the changelog, sorted: deleted once committed past."""
    commit: GroupCommit | None = None


class TableAnsweredMarks:
    """Offsets of the records whose result is published and not yet committed: one record
    per partition (key `"<partition>"`), its value the offsets as sorted inclusive ranges,
    `[[first, last], ...]` (`offsets.OffsetRanges`).

    Each write holds every offset marked before it, less those the group committed past, so
    the latest record is the partition's whole set. Marks of one partition are
    group-committed: `mark` returns once a record holding its offset is acked, and marks
    made while a write is in flight share the next one. Marks of the older layout (one key
    `"<partition>:<offset>"` each) restored from the changelog are still seen, and deleted
    once the group committed past them.
    """

    def __init__(self, table: Any, committed: Committed, paid: TablePaidCalls | None) -> None:
        self._table = table
        self._committed = committed
        self._paid = paid
        self._partitions: dict[int, _PartitionMarks] = {}

    def seen(self, partition: int, offset: int) -> bool:
        if offset in self._of(partition).offsets:
            return True
        return event_key(partition, offset) in self._table.data

    async def mark(self, partition: int, offset: int) -> None:
        """Record that the event is answered (durably), then drop its paid answers."""
        marks = self._of(partition)
        marks.offsets.add(offset)
        assert marks.commit is not None
        await marks.commit.request()
        if self._paid is not None:
            self._paid.forget(partition, offset)

    def forget_partitions(self) -> None:
        """After a rebalance: marks of partitions owned meanwhile by others are re-read."""
        self._partitions.clear()

    def _of(self, partition: int) -> _PartitionMarks:
        marks = self._partitions.get(partition)
        if marks is None:
            marks = self._partitions[partition] = self._restored(partition)

            async def write_marks() -> None:
                await self._write(partition, marks)

            marks.commit = GroupCommit(write_marks)
        return marks

    def _restored(self, partition: int) -> _PartitionMarks:
        """What the changelog holds for `partition` (written by this or an earlier owner)."""
        offsets = OffsetRanges()
        stored = self._table.data.get(str(partition))
        if stored is not None:
            try:
                offsets = OffsetRanges.decode(stored)
            except ValueError as exc:
                log.warning(
                    "answered marks of partition %d unreadable, ignored: %s", partition, exc
                )
        prefix = f"{partition}:"
        legacy = sorted(
            int(key[len(prefix) :])
            for key in list(self._table.data)
            if isinstance(key, str) and key.startswith(prefix) and key[len(prefix) :].isdigit()
        )
        return _PartitionMarks(offsets, legacy)

    async def _write(self, partition: int, marks: _PartitionMarks) -> None:
        """Write the partition's record; offsets the group committed past are left out."""
        committed = self._committed(partition)
        if committed is not None:
            marks.offsets.drop_below(committed)
            while marks.legacy and marks.legacy[0] < committed:
                delete(self._table, partition, event_key(partition, marks.legacy.pop(0)))
        await write(self._table, partition, str(partition), marks.offsets.encode())


class SpendTable:
    """Spend per (tenant, period, partition) in a table, written once per flush.

    A charge adds to the key's total in the table's local data and to the `SpendView` at
    once (this worker parks an over-budget tenant from its next event), and marks the key
    dirty; `flush` writes each dirty key's total once, however many charges it took since
    the last flush. Totals are absolute, so a record read twice, or a later one replacing
    an earlier, changes nothing. The owner of a partition is the only writer of its keys:
    its spend is flushed before the partition is revoked (`app.flush_spend`), so the next
    owner recovers every total. A kill -9 loses at most the spend charged since the last
    flush (the answers are kept: the redelivered event reuses them and is not charged
    again).
    """

    def __init__(self, table: Any, view: SpendView) -> None:
        self._table = table
        self._view = view
        self._dirty: dict[str, int] = {}  # key -> its partition
        self._flushing = asyncio.Lock()

    def add(self, tenant: str, period: str, partition: int, cost_usd: float) -> None:
        key = spend_key(tenant, period, partition)
        total = float(self._table.data.get(key, 0.0)) + cost_usd
        self._table.data[key] = total
        self._dirty[key] = partition
        self._view.set_partial(key, total)  # our own spend counts at once

    @property
    def dirty(self) -> int:
        """Keys charged since the last flush."""
        return len(self._dirty)

    async def flush(self) -> None:
        """Write every total charged since the last flush; returns once all are acked. On a
        failure the keys not written stay dirty for the next flush."""
        async with self._flushing:  # one flush at a time: a key's records stay in order
            dirty, self._dirty = self._dirty, {}
            try:
                deliveries = [
                    await send(self._table, partition, key, self._table.data[key])
                    for key, partition in dirty.items()
                ]
                for delivery in deliveries:
                    await delivery
            except BaseException:
                for key, partition in dirty.items():
                    self._dirty.setdefault(key, partition)
                raise

    async def flush_every(self, interval_s: float) -> None:
        """Flush every `interval_s`, forever (cancel to stop); a failed flush is logged and
        its keys written by the next."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("spend: %d totals not written (%r); trying again", self.dirty, exc)


class TableBudgets:
    """Budgets checked against the group-wide `SpendView` (which follows the spend table's
    changelog); spend charged to a `SpendTable`."""

    def __init__(self, budgets: dict[str, Budget], spend: SpendTable, view: SpendView) -> None:
        self._budgets = budgets
        self._spend = spend
        self._view = view

    def _period(self, tenant: str) -> tuple[Budget | None, str]:
        budget = self._budgets.get(tenant)
        return budget, period_key(budget.period if budget else "day", datetime.now(UTC))

    def over_budget(self, tenant: str) -> OverBudget | None:
        budget, period = self._period(tenant)
        if budget is None:
            return None
        spent = self._view.total(tenant, period)
        return OverBudget(period, spent, budget.usd) if spent >= budget.usd else None

    def charge(self, tenant: str, cost_usd: float) -> None:
        if cost_usd <= 0:
            return
        event = current_event()
        assert event is not None, "charge() runs inside stream processing"
        _, period = self._period(tenant)
        self._spend.add(tenant, period, event.message.partition, cost_usd)
