"""A bounded index of recent results (outputs, dead letters, parked events), as the
worker published them: by event id for the long poll, in arrival order for streams.

Bounded by count and bytes, oldest first out, so memory stays flat over hours of traffic.
It remembers, per partition, the offset after the last record it took (`head`) and the
first offset from which it still holds every result (`covered`): a stream resumes from the
index when its position is not older than that, and reads the topic otherwise."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmflow.services.gateway.auth import Grant

TP = tuple[str, int]
"""A topic and a partition."""

RECORD_TYPES = ("output", "dead_letter", "parked")


@dataclass(frozen=True, slots=True)
class Entry:
    """One result record and what the gateway looks it up by."""

    topic: str
    partition: int
    offset: int
    topology: str
    record_type: str
    event_id: str | None
    key: str | None
    tenant: str | None
    value: bytes


def entry_of(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, topology: str
) -> Entry | None:
    """The entry of a result record; None for anything else (not JSON, no record type)."""
    if not value:
        return None
    try:
        data: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("record_type") not in RECORD_TYPES:
        return None
    event_id = data.get("event_id")
    tenant = data.get("tenant") if data["record_type"] != "dead_letter" else _original_tenant(data)
    return Entry(
        topic=topic,
        partition=partition,
        offset=offset,
        topology=topology,
        record_type=data["record_type"],
        event_id=event_id if isinstance(event_id, str) else None,
        key=key.decode("utf-8", "replace") if key is not None else None,
        tenant=tenant if isinstance(tenant, str) else None,
        value=value,
    )


def _original_tenant(dead_letter: dict[str, Any]) -> str | None:
    """A dead letter names no tenant: its event's, when the original bytes are carried and
    say one; else none (the result is then nobody's, and no tenant's token sees it)."""
    original = dead_letter.get("original_b64")
    if not isinstance(original, str):
        return None
    try:
        event = orjson.loads(base64.b64decode(original, validate=True))
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        return None
    tenant = event.get("tenant") if isinstance(event, dict) else None
    return tenant if isinstance(tenant, str) else None


@dataclass(eq=False)
class Subscription:
    """A stream's share of new results: its topology's, filtered, in a bounded queue."""

    topology: str
    grant: Grant
    key: str | None = None
    tenant: str | None = None
    size: int = 1000
    queue: asyncio.Queue[Entry] = field(init=False)
    overflowed: bool = False
    """Set when the queue was full: the client fell behind and is closed."""

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.size)

    def wants(self, entry: Entry) -> bool:
        return (
            entry.topology == self.topology
            and self.grant.sees(entry.tenant)
            and (self.tenant is None or entry.tenant == self.tenant)
            and (self.key is None or entry.key == self.key)
        )


@dataclass(eq=False)
class _Waiter:
    grant: Grant
    future: asyncio.Future[Entry]


class ResultIndex:
    """Recent results by event id and in arrival order, with waiters and subscriptions."""

    def __init__(self, max_results: int, max_bytes: int) -> None:
        self.max_results = max_results
        self.max_bytes = max_bytes
        self._entries: deque[Entry] = deque()
        self._by_id: dict[str, dict[str | None, Entry]] = {}
        """event id -> tenant -> its newest result: ids are chosen by producers, so another
        tenant's event of the same id must not hide a tenant's own result."""
        self.bytes = 0
        self.head: dict[TP, int] = {}
        """Per partition, the offset after the last record taken."""
        self.covered: dict[TP, int] = {}
        """Per partition, the first offset from which every result is still held."""
        self.began: dict[TP, int] = {}
        """Per partition, the offset the index first read it from (its lookback)."""
        self._waiters: dict[str, list[_Waiter]] = {}
        self._subscriptions: set[Subscription] = set()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    def start(self, tp: TP, offset: int) -> None:
        """The index reads `tp` from `offset` on (and holds nothing of it before)."""
        self.head[tp] = offset
        self.covered[tp] = offset
        self.began.setdefault(tp, offset)

    def skip(self, tp: TP, offset: int) -> None:
        """A record of `tp` that is no result was read."""
        self.head[tp] = offset + 1

    def add(self, entry: Entry) -> None:
        tp = (entry.topic, entry.partition)
        self.head[tp] = entry.offset + 1
        self.covered.setdefault(tp, entry.offset)
        self._entries.append(entry)
        self.bytes += len(entry.value)
        if entry.event_id is not None:
            tenants = self._by_id.setdefault(entry.event_id, {})
            tenants.pop(entry.tenant, None)  # re-inserted last: the newest of any tenant
            tenants[entry.tenant] = entry
            self._wake(entry.event_id, entry)
        for subscription in list(self._subscriptions):
            if subscription.wants(entry):
                try:
                    subscription.queue.put_nowait(entry)
                except asyncio.QueueFull:
                    subscription.overflowed = True
                    self._subscriptions.discard(subscription)
        while len(self._entries) > self.max_results or (
            self.bytes > self.max_bytes and len(self._entries) > 1
        ):
            self._evict()

    def _evict(self) -> None:
        old = self._entries.popleft()
        self.bytes -= len(old.value)
        tenants = self._by_id.get(old.event_id) if old.event_id is not None else None
        if tenants is not None and tenants.get(old.tenant) is old:
            del tenants[old.tenant]
            if not tenants:
                del self._by_id[old.event_id]  # type: ignore[arg-type]
        tp = (old.topic, old.partition)
        self.covered[tp] = max(self.covered.get(tp, 0), old.offset + 1)

    def get(self, event_id: str, grant: Grant) -> Entry | None:
        tenants = self._by_id.get(event_id)
        if not tenants:
            return None
        if grant.tenant is None:  # an open gateway sees every tenant's: the newest
            return next(reversed(tenants.values()))
        return tenants.get(grant.tenant)

    async def wait(self, event_id: str, grant: Grant, timeout_s: float) -> Entry | None:
        """The newest result of `event_id` visible to `grant`, waiting up to `timeout_s` for
        one to arrive; None when none did. Another tenant's result is waited past, so the
        answer's timing says nothing about it."""
        if (found := self.get(event_id, grant)) is not None or timeout_s <= 0:
            return found
        waiter = _Waiter(grant, asyncio.get_running_loop().create_future())
        self._waiters.setdefault(event_id, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter.future, timeout_s)
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(event_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop(event_id, None)

    def _wake(self, event_id: str, entry: Entry) -> None:
        for waiter in self._waiters.get(event_id, []):
            if waiter.grant.sees(entry.tenant) and not waiter.future.done():
                waiter.future.set_result(entry)

    def subscribe(self, subscription: Subscription) -> list[Entry]:
        """Start queueing new results for `subscription`; returns the held ones of its
        topology (oldest first), so that together nothing is missed nor given twice."""
        self._subscriptions.add(subscription)
        return [e for e in self._entries if subscription.wants(e)]

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def not_before_lookback(self, positions: dict[TP, int], topics: list[str]) -> dict[TP, int]:
        """`positions` moved up to where the index first read each partition of `topics`:
        how far back a stream may resume without the replay right (a stream id is the
        client's own text, so `o0:0` must not open the whole history)."""
        moved = dict(positions)
        for tp, began in self.began.items():
            if tp[0] in topics:
                moved[tp] = max(moved.get(tp, 0), began)
        return moved

    def holds_after(self, positions: dict[TP, int], tps: list[TP]) -> bool:
        """Whether every result of `tps` at or after `positions` (0 where it names none)
        is still held."""
        return all(positions.get(tp, 0) >= self.covered.get(tp, 0) for tp in tps)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def newest(self) -> Iterator[Entry]:
        """The held results, newest first."""
        return reversed(self._entries)

    def at(self, topic: str, partition: int, offset: int) -> Entry | None:
        """The held result at that place, if any."""
        for entry in reversed(self._entries):
            if (entry.topic, entry.partition, entry.offset) == (topic, partition, offset):
                return entry
        return None
