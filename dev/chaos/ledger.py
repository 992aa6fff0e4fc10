"""What went in and what came out: the events a scenario produced, every result the workers
published, and the counts the table reports.

`Feed` produces events (paced, or kept a bounded distance ahead of the results) and keeps
where each landed. `Tally` follows the output, dead-letter and parked topics from their
start while the scenario runs, so the suite sees results as they arrive (for gaps, latency
and knowing when everything is in). `count` turns both, the SIMULATOR's request log and a
pass of the SDK's de-duplicating `ResultConsumer` into one row of numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dev.bench.harness import Encoded, partitions_of, ticket
from llmflow.services.sdk import ResultConsumer
from llmflow.services.sdk.consumer import identity

log = logging.getLogger(__name__)

Source = tuple[str, int, int]
"""Where a record was read: topic, partition, offset."""


# --- in --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """An input record the broker acknowledged."""

    event_id: str | None
    """None for records that carry no readable id (hostile ones)."""
    source: Source
    created: float
    """The event's own timestamp (epoch seconds); latency is measured from it."""
    acked: float


class Feed:
    """Produces a scenario's input records and keeps each one the broker acknowledged.

    Idempotent with acks from all replicas, and patient (two minutes per request), so a
    broker that restarts meanwhile neither loses nor doubles a record."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.sent: list[Sent] = []
        self.failed: list[str] = []
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=120_000,
            max_request_size=4 * 1024 * 1024,
        )
        self._pending: set[asyncio.Future[Any]] = set()
        self._n = 0

    async def __aenter__(self) -> Feed:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.flush()
        await self._producer.stop()

    @property
    def last_acked(self) -> float:
        return max((s.acked for s in self.sent), default=time.time())

    async def send(
        self, value: bytes | None, key: bytes | None, event_id: str | None, created: float
    ) -> None:
        """Queue one record (round-robin over the partitions); its ack is recorded later."""
        partition = self._n % self.partitions
        self._n += 1
        future = await self._producer.send(self.topic, value, key=key, partition=partition)

        def acked(done: asyncio.Future[Any]) -> None:
            self._pending.discard(done)
            if done.cancelled() or done.exception() is not None:
                self.failed.append(f"{event_id}: {done.exception()!r}")
                return
            meta = done.result()
            source = (self.topic, int(meta.partition), int(meta.offset))
            self.sent.append(Sent(event_id, source, created, time.time()))

        self._pending.add(future)
        future.add_done_callback(acked)

    async def send_event(self, event: Encoded) -> None:
        await self.send(event.value, event.key, event.event_id, event.created)

    async def paced(
        self,
        prefix: str,
        count: int,
        rate: float,
        *,
        first: int = 0,
        answered: Callable[[], int] | None = None,
        max_ahead: int | None = None,
        until: float | None = None,
    ) -> int:
        """Send events `prefix-<first>` .. at `rate` per second (support tickets of the sample
        customers, each built just before it is sent); with `answered` and `max_ahead`, also
        never more than `max_ahead` events ahead of the results; with `until` (a
        `time.monotonic()` deadline), stop then. Returns how many were sent."""
        began = time.monotonic()
        n = 0
        while n < count and (until is None or time.monotonic() < until):
            due = min(count, int((time.monotonic() - began) * rate) + 1)
            if answered is not None and max_ahead is not None:
                ahead = self._n - len(self.failed) - answered()
                due = min(due, n + max(0, max_ahead - ahead))
            while n < due:
                await self.send_event(ticket(prefix, first + n))
                n += 1
            await asyncio.sleep(0.005)
        return n

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)


# --- out -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """What the suite keeps of one result record."""

    kind: str
    """`output`, `dead_letter` or `parked` (the record's `record_type`)."""
    event_id: str | None
    source: Source
    ts: float
    """The record's Kafka timestamp (epoch seconds): when the worker published it."""
    worker: str | None
    what: str | None
    """A dead letter's `stage/error_kind`, a parked record's reason."""

    @property
    def identity(self) -> str:
        """The SDK's identity of the event a result answers (see `sdk.consumer.identity`)."""
        if self.event_id is not None:
            return f"id:{self.event_id}"
        topic, partition, offset = self.source
        return f"at:{topic}:{partition}:{offset}"


def seen(record: Any) -> Seen | None:
    if record.value is None:
        return None
    data = json.loads(record.value)
    kind = str(data.get("record_type"))
    what: str | None = None
    if kind == "dead_letter":
        what = f"{data.get('stage')}/{data.get('error_kind')}"
    elif kind == "parked":
        what = str(data.get("reason"))
    return Seen(
        kind=kind,
        event_id=data.get("event_id"),
        source=(data["source_topic"], int(data["source_partition"]), int(data["source_offset"])),
        ts=record.timestamp / 1000,
        worker=data.get("worker"),
        what=what,
    )


class Tally:
    """Follows the result topics from their start (no consumer group) while a scenario runs."""

    def __init__(self, bootstrap: str, topics: Sequence[str], partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.partitions = partitions
        self.results: list[Seen] = []
        self.first_by_source: dict[Source, float] = {}
        self.first_by_id: dict[str, float] = {}
        self.unreadable = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Tally:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            request_timeout_ms=120_000,
        )
        await consumer.start()
        tps = [tp for topic in self.topics for tp in partitions_of(topic, self.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._follow(consumer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        try:
            while True:
                try:
                    batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                except Exception as exc:  # the broker restarting: aiokafka reconnects
                    log.info("result consumer: %r; retrying", exc)
                    await asyncio.sleep(1)
                    continue
                for records in batch.values():
                    for record in records:
                        self._add(record)
        finally:
            await consumer.stop()

    def _add(self, record: Any) -> None:
        try:
            result = seen(record)
        except (ValueError, KeyError, TypeError):
            self.unreadable += 1
            return
        if result is None:
            return
        self.results.append(result)
        self.first_by_source.setdefault(result.source, result.ts)
        if result.event_id is not None:
            self.first_by_id.setdefault(result.event_id, result.ts)

    @property
    def count(self) -> int:
        return len(self.results)

    def outputs(self) -> int:
        return sum(1 for r in self.results if r.kind == "output")

    def answered_at(self, sent: Sent) -> float | None:
        """When the first result for `sent` was published (by its id or where it was)."""
        by_source = self.first_by_source.get(sent.source)
        by_id = self.first_by_id.get(sent.event_id) if sent.event_id is not None else None
        found = [t for t in (by_source, by_id) if t is not None]
        return min(found) if found else None

    async def wait_all(
        self,
        feed: Feed,
        *,
        stall_s: float,
        cap_s: float,
        tick: Callable[[], None] = lambda: None,
    ) -> bool:
        """Until every record `feed` sent has a result: True; False when no result came for
        `stall_s` or `cap_s` passed. `tick` runs every half second (e.g. to restart a worker
        that died)."""
        await feed.flush()
        pending = list(feed.sent)
        began = progressed = time.monotonic()
        last_count = self.count
        while True:
            pending = [s for s in pending if self.answered_at(s) is None]
            if not pending:
                return True
            now = time.monotonic()
            if self.count > last_count:
                last_count, progressed = self.count, now
            if now - progressed > stall_s or now - began > cap_s:
                log.warning("%d events still without a result", len(pending))
                return False
            tick()
            await asyncio.sleep(0.5)

    def output_times(self) -> list[float]:
        return sorted(r.ts for r in self.results if r.kind == "output")


# --- counts ----------------------------------------------------------------------------------


@dataclass
class Counts:
    """The table's numbers for one scenario."""

    events: int
    outputs: int
    dead_letters: int
    parked: int
    lost: int
    duplicates_before: int
    duplicates_after: int | None
    paid_twice: int | None
    drain_s: float | None
    notes: list[str] = field(default_factory=list)


def sdk_duplicates(
    bootstrap: str, topics: Sequence[str], expected: int, timeout_s: float = 60.0
) -> tuple[int, int, int]:
    """Read the result topics with the SDK's ResultConsumer (which drops results of events it
    has seen) until it has read `expected` records: (events it yielded more than once,
    records it dropped, records it read)."""
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    with ResultConsumer(bootstrap, list(topics)) as consumer:
        read = 0
        while read < expected and time.monotonic() < deadline:
            # Joining its consumer group may take a while: read in rounds until all came.
            counts.update(identity(r) for r in consumer.results(idle_timeout_s=5))
            read = sum(counts.values()) + consumer.duplicates
        counts.update(identity(r) for r in consumer.results(idle_timeout_s=2))  # late copies
        read = sum(counts.values()) + consumer.duplicates
        return sum(n - 1 for n in counts.values() if n > 1), consumer.duplicates, read


def count(
    feed: Feed,
    tally: Tally,
    *,
    paid_twice: int | None,
    sdk: tuple[int, int, int] | None,
) -> Counts:
    """Lost, duplicates, drain time: everything the table shows, from what was sent and
    what came out."""
    kinds: dict[str, set[str]] = {"output": set(), "dead_letter": set(), "parked": set()}
    for result in tally.results:
        kinds.setdefault(result.kind, set()).add(result.identity)
    per_identity = Counter(r.identity for r in tally.results)
    duplicates_before = sum(n - 1 for n in per_identity.values() if n > 1)
    answered = [tally.answered_at(s) for s in feed.sent]
    lost = sum(1 for t in answered if t is None)
    drain = max((t for t in answered if t is not None), default=None)
    notes = []
    if feed.failed:
        notes.append(f"{len(feed.failed)} events not accepted by the broker")
    if tally.unreadable:
        notes.append(f"{tally.unreadable} unreadable result records")
    duplicates_after: int | None = None
    if sdk is not None:
        duplicates_after, dropped, read = sdk
        if read != tally.count:
            notes.append(f"SDK consumer read {read} of {tally.count} results")
            duplicates_after = None if read < tally.count else duplicates_after
        if dropped != duplicates_before:
            notes.append(f"SDK consumer dropped {dropped} records")
    return Counts(
        events=len(feed.sent),
        outputs=len(kinds["output"]),
        dead_letters=len(kinds["dead_letter"]),
        parked=len(kinds["parked"]),
        lost=lost,
        duplicates_before=duplicates_before,
        duplicates_after=duplicates_after,
        paid_twice=paid_twice,
        drain_s=max(0.0, drain - feed.last_acked) if drain is not None and not lost else None,
        notes=notes,
    )


def gaps_after(times: Sequence[float], start: float, end: float) -> tuple[float, float]:
    """The longest pause between consecutive output times that ends after `start` and
    begins before `end`: (its length, when it ended). (0, start) when there is none."""
    best = (0.0, start)
    previous: float | None = None
    for t in times:
        if previous is not None and t > start and previous < end and t - previous > best[0]:
            best = (t - previous, t)
        previous = t
    return best


def latencies_ms(feed: Feed, tally: Tally) -> list[float]:
    """Per answered event: its first result's publish time minus the event's own timestamp."""
    values = []
    for sent in feed.sent:
        at = tally.answered_at(sent)
        if at is not None:
            values.append((at - sent.created) * 1000)
    return sorted(values)
