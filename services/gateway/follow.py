"""Reads the result topics into the index with aiokafka, without a consumer group: every
partition of every topology's output, dead-letter and parked topics, from a lookback
before their end, following partitions added later. And reads a stream's past from given
positions when the index no longer holds it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from llmflow.services.broker.cancel import stopping
from llmflow.services.broker.security import client_options
from llmflow.services.gateway.results import TP, Entry, ResultIndex, entry_of

log = logging.getLogger(__name__)

# How often partitions and topics added since are looked for.
REFRESH_S = 5.0
YIELD_EVERY = 16
"""Records added to the index between turns of the event loop: the streams' turns, so a
burst of results does not fill the queue of a client that keeps up."""
RETRY_PAUSE_S = 2.0


def _consumer(bootstrap_servers: str) -> Any:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        **client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        metadata_max_age_ms=5000,
        client_id="llmflow-gateway",
    )


async def partitions(consumer: Any, topics: list[str]) -> dict[str, set[int]]:
    """The partitions of each of `topics` that exists, as the cluster says now. (The
    consumer's `partitions_for_topic` reads its cached metadata, which a consumer that is
    assigned nothing yet may not hold for minutes.)"""
    cluster = await consumer._client.fetch_all_metadata()
    found = {}
    for topic in topics:
        numbers = cluster.partitions_for_topic(topic)
        if numbers:
            found[topic] = set(numbers)
    return found


class ResultFollower:
    """Fills `index` from `topics` (topic -> its topology's name)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: dict[str, str],
        index: ResultIndex,
        lookback: int,
        consumer: Callable[[str], Any] = _consumer,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self.index = index
        self.lookback = lookback
        self._consumer = consumer
        self.caught_up = False
        """Set once every topic exists and the index has read up to the end offsets it saw
        when it started."""
        self.missing: list[str] = sorted(topics)
        self.stopped: str | None = None
        """Why reading stopped, until it reads again (an outage: not ready meanwhile)."""

    def not_ready(self) -> str | None:
        if self.stopped is not None:
            return f"the result index is not reading: {self.stopped}"
        if self.missing:
            return f"result topics do not exist yet: {', '.join(self.missing)}"
        return None if self.caught_up else "the result index is catching up"

    async def run(self) -> None:
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                if stopping():
                    raise  # the gateway stops
                # aiokafka's, after an outage: the index must go on.
                self.stopped = "its Kafka reader stopped uncleanly"
                log.warning("result index: the reader stopped uncleanly; reading again")
                await asyncio.sleep(RETRY_PAUSE_S)
            except Exception as exc:  # the broker went away: read again from where we were
                self.stopped = str(exc) or type(exc).__name__
                log.warning("result index: reading stopped (%s); again in %g s", exc, RETRY_PAUSE_S)
                await asyncio.sleep(RETRY_PAUSE_S)

    async def _follow(self) -> None:
        from aiokafka import TopicPartition

        consumer = self._consumer(self.bootstrap_servers)
        await consumer.start()
        try:
            assigned: set[TP] = set()
            targets: dict[TP, int] = {}
            refreshed = -REFRESH_S
            loop = asyncio.get_running_loop()
            while True:
                if loop.time() - refreshed >= REFRESH_S:
                    refreshed = loop.time()
                    added = await self._assign(consumer, assigned)
                    if added:
                        targets |= await self._start(consumer, added)
                if not self.caught_up and not self.missing:
                    positions = {tp: await consumer.position(TopicPartition(*tp)) for tp in targets}
                    if all(positions[tp] >= end for tp, end in targets.items()):
                        self.caught_up = True
                        log.info("result index caught up: %d results", len(self.index))
                if not assigned:  # getmany waits for an assignment that never comes
                    await asyncio.sleep(0.5)
                    continue
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                self.stopped = None
                taken = 0
                for tp, records in batches.items():
                    topology = self.topics[tp.topic]
                    for r in records:
                        entry = entry_of(r.topic, r.partition, r.offset, r.key, r.value, topology)
                        if entry is None:
                            self.index.skip((r.topic, r.partition), r.offset)
                        else:
                            self.index.add(entry)
                        taken += 1
                        if taken % YIELD_EVERY == 0:  # streams take a burst as it comes
                            await asyncio.sleep(0)
        finally:
            await consumer.stop()

    async def _assign(self, consumer: Any, assigned: set[TP]) -> set[TP]:
        """Assign every partition of the topics that exist now; returns the new ones."""
        from aiokafka import TopicPartition

        existing = await partitions(consumer, list(self.topics))
        self.missing = sorted(set(self.topics) - set(existing))
        every = {(topic, p) for topic, numbers in existing.items() for p in numbers}
        added = every - assigned
        if added:
            # assign() starts over: positions of the partitions held so far are kept here.
            kept = {tp: await consumer.position(TopicPartition(*tp)) for tp in assigned}
            consumer.assign([TopicPartition(*tp) for tp in sorted(every)])
            for tp, offset in kept.items():
                consumer.seek(TopicPartition(*tp), offset)
            assigned |= added
        return added

    async def _start(self, consumer: Any, added: set[TP]) -> dict[TP, int]:
        """Seek the new partitions to `lookback` before their end; returns their ends."""
        from aiokafka import TopicPartition

        tps = [TopicPartition(*tp) for tp in sorted(added)]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            read = self.index.head.get((tp.topic, tp.partition))
            if read is not None:  # read before this consumer (a restart after an error)
                consumer.seek(tp, max(starts[tp], read))
                continue
            # Partitions added once caught up are new: read from their start.
            back = ends[tp] if self.caught_up else self.lookback
            offset = max(starts[tp], ends[tp] - back)
            consumer.seek(tp, offset)
            self.index.start((tp.topic, tp.partition), offset)
        return {(tp.topic, tp.partition): ends[tp] for tp in tps}


async def read_from(
    bootstrap_servers: str,
    topics: dict[str, str],
    positions: dict[TP, int],
    until: Callable[[dict[TP, int]], bool],
    consumer: Callable[[str], Any] = _consumer,
) -> AsyncIterator[tuple[TP | None, int, Entry | None]]:
    """The records of `topics` (topic -> topology) from `positions` (a partition it does
    not name: from its start), each as (partition, offset, its entry or None), until
    `until(positions reached)` says the rest is held elsewhere; (None, 0, None) after a
    fetch that brought nothing, so the caller may do something while it waits."""
    from aiokafka import TopicPartition

    reader = consumer(bootstrap_servers)
    await reader.start()
    try:
        existing = await partitions(reader, list(topics))
        tps = [TopicPartition(t, p) for t, numbers in existing.items() for p in sorted(numbers)]
        if not tps:
            return
        reader.assign(tps)
        reached = {
            (tp.topic, tp.partition): positions.get((tp.topic, tp.partition), 0) for tp in tps
        }
        for tp in tps:
            reader.seek(tp, reached[(tp.topic, tp.partition)])
        while not until(reached):
            batches = await reader.getmany(timeout_ms=500, max_records=500)
            if not batches:
                yield None, 0, None
            for records in batches.values():
                for r in records:
                    key = (r.topic, r.partition)
                    reached[key] = r.offset + 1
                    entry = entry_of(
                        r.topic, r.partition, r.offset, r.key, r.value, topics[r.topic]
                    )
                    yield key, r.offset, entry
            for tp in tps:  # a partition's end may hold no record (transaction markers)
                key = (tp.topic, tp.partition)
                reached[key] = max(reached[key], await reader.position(tp))
    finally:
        await reader.stop()
