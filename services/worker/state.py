"""Worker state in faust tables: changelogged to Kafka, co-partitioned with the input.

Each table is written only while processing an event of the partition it belongs to, so
the owner of a partition is the only writer of its part, and a worker that takes the
partition over (rebalance, crash) recovers that part before it processes any event.

Writes that protect money and duplicates are awaited until the broker acked them
(`table[key] = value` would leave them in faust's producer buffer, lost by a kill -9): an
answer is durable before the event goes on, an answered mark before the event is acked.
What the state holds is bounded by the events not yet committed, not by the events seen:
an event's answers are deleted once its answered mark is durable, and a mark once the
consumer committed past its offset (the changelogs are compacted, so deletes shrink them).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from faust.streams import current_event

from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.worker.budgets import Budget, SpendView, period_key, spend_key
from llmflow.services.worker.ports import OverBudget

# partition -> the next offset the group will read from it after a restart, if known
Committed = Callable[[int], int | None]

# Compaction settings of the answered/paid changelogs: their keys are short-lived, so
# segments roll often and tombstones go soon, which keeps recovery after a crash short.
CHANGELOG_CONFIG = {
    "segment.ms": str(10 * 60_000),
    "delete.retention.ms": str(10 * 60_000),
    "min.cleanable.dirty.ratio": "0.1",
}


async def write(table: Any, partition: int, key: str, value: Any) -> None:
    """`table[key] = value`, returning once the changelog write is acked. Sent directly,
    not through faust's producer buffer, which other writes may keep full."""
    table.data[key] = value
    delivery = await table.changelog_topic.send(
        key=key,
        value=value,
        partition=partition,
        key_serializer=table.key_serializer,
        value_serializer=table.value_serializer,
    )
    await delivery


def delete(table: Any, partition: int, key: str) -> None:
    """`del table[key]`. Not awaited: a tombstone lost in a crash leaves one stale key."""
    table.data.pop(key, None)
    table.send_changelog(partition, key, None, value_serializer="raw")


def _event_position() -> tuple[int, int]:
    event = current_event()
    assert event is not None, "table state is used inside stream processing"
    return event.message.partition, event.message.offset


class TablePaidCalls:
    """Answers by call id, kept from the moment a call is answered until its event is."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._by_event: dict[tuple[int, int], set[str]] = defaultdict(set)

    def get(self, call_id: str) -> ModelCallResult | None:
        stored = self._table.get(call_id)
        if stored is None:
            return None
        self._by_event[_event_position()].add(call_id)  # stored by an earlier delivery
        return ModelCallResult.model_validate(stored)

    async def put(self, result: ModelCallResult) -> None:
        partition, offset = _event_position()
        self._by_event[(partition, offset)].add(result.call_id)
        await write(self._table, partition, result.call_id, result.model_dump(mode="json"))

    def forget(self, partition: int, offset: int) -> None:
        """The event at `partition`/`offset` is answered for good: drop its answers."""
        for call_id in self._by_event.pop((partition, offset), ()):
            delete(self._table, partition, call_id)


class TableAnsweredMarks:
    """`partition:offset` of every record whose result is published and not yet committed."""

    def __init__(self, table: Any, committed: Committed, paid: TablePaidCalls | None) -> None:
        self._table = table
        self._committed = committed
        self._paid = paid
        self._pending: dict[int, deque[int]] = {}  # partition -> offsets marked, oldest first

    def seen(self, partition: int, offset: int) -> bool:
        return f"{partition}:{offset}" in self._table

    async def mark(self, partition: int, offset: int) -> None:
        """Record that the event is answered (durably), then drop what is no longer needed:
        its paid answers, and marks the group committed past."""
        pending = self._pending_of(partition)
        await write(self._table, partition, f"{partition}:{offset}", 1)
        pending.append(offset)
        if self._paid is not None:
            self._paid.forget(partition, offset)
        committed = self._committed(partition)
        while committed is not None and pending and pending[0] < committed:
            delete(self._table, partition, f"{partition}:{pending.popleft()}")

    def forget_partitions(self) -> None:
        """After a rebalance: marks of partitions owned meanwhile by others are re-read."""
        self._pending.clear()

    def _pending_of(self, partition: int) -> deque[int]:
        pending = self._pending.get(partition)
        if pending is None:
            # Marks restored from the changelog (written by an earlier owner) are pruned too.
            prefix = f"{partition}:"
            restored = sorted(
                int(key[len(prefix) :]) for key in self._table if key.startswith(prefix)
            )
            pending = self._pending[partition] = deque(restored)
        return pending


class TableBudgets:
    """Spend per (tenant, period, partition) in a table; budgets checked against the
    group-wide `SpendView` that follows the table's changelog."""

    def __init__(self, budgets: dict[str, Budget], table: Any, view: SpendView) -> None:
        self._budgets = budgets
        self._table = table
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
        key = spend_key(tenant, period, event.message.partition)
        total = self._table[key] + cost_usd
        self._table[key] = total
        self._view.set_partial(key, total)  # our own writes count at once
