"""The console's flow per topology, from Kafka alone: the end offsets of the input and result
topics (events in, outputs, dead letters, parked) and the workers' group's committed offsets
(in flight, per partition), sampled every few seconds; latencies from the outputs' own
`totals.latency_ms` in the index. Any number of workers on any machines: nothing is asked of
them but what they commit and publish."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

import orjson

from llmflow.services.broker.security import client_options
from llmflow.services.gateway.auth import Grant
from llmflow.services.gateway.results import TP, Entry
from llmflow.topologies.spec import Topology

log = logging.getLogger(__name__)

# Rates are taken over this many seconds of samples (the newest against the one before).
RATE_S = 10.0
# Outputs per topology whose latencies make the percentiles.
LATENCY_OUTPUTS = 500
RETRY_PAUSE_S = 2.0


@dataclass(frozen=True, slots=True)
class Sample:
    """What the cluster said at one moment."""

    at: float
    """Seconds (any clock that only moves forward)."""
    ends: dict[TP, int]
    """End offset of every partition of the input and result topics."""
    committed: dict[TP, int]
    """The workers' group's committed offset of each input partition it committed."""


class Offsets(Protocol):
    """Where samples come from: the broker, or a fake in tests."""

    async def sample(self, topics: list[str], group: str) -> tuple[dict[TP, int], dict[TP, int]]:
        """(end offsets of `topics`, committed offsets of `group` in them)."""
        ...


def _sum(offsets: dict[TP, int], topic: str) -> int:
    return sum(o for (t, _), o in offsets.items() if t == topic)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0 < q <= 1), None of no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))
    return ordered[int(rank) - 1]


class FlowMeter:
    """Keeps the samples of the last `window_s` and answers snapshots of them."""

    COUNTERS = ("events_in", "outputs", "dead_letters", "parked")

    def __init__(self, topologies: list[Topology], window_s: float) -> None:
        self.topologies = topologies
        self.window_s = window_s
        self.samples: deque[Sample] = deque()
        self._parsed: dict[tuple[str, int, int], float | None] = {}

    def topics(self) -> list[str]:
        return sorted(
            {
                topic
                for t in self.topologies
                for topic in (t.input_topic, t.output_topic, t.dead_letter_topic, t.parked)
            }
        )

    def partitions(self, topic: str) -> int:
        """Partitions of `topic` in the newest sample (0: not known yet)."""
        if not self.samples:
            return 0
        return sum(1 for t, _ in self.samples[-1].ends if t == topic)

    def record(self, sample: Sample) -> None:
        self.samples.append(sample)
        while self.samples and sample.at - self.samples[0].at > self.window_s:
            self.samples.popleft()

    def _counts(self, topology: Topology, sample: Sample) -> dict[str, int]:
        topics = (
            topology.input_topic,
            topology.output_topic,
            topology.dead_letter_topic,
            topology.parked,
        )
        return {
            name: _sum(sample.ends, topic)
            for name, topic in zip(self.COUNTERS, topics, strict=True)
        }

    def _rates(self, topology: Topology, old: Sample, new: Sample) -> dict[str, float]:
        seconds = new.at - old.at
        if seconds <= 0:
            return dict.fromkeys(self.COUNTERS, 0.0)
        before, after = self._counts(topology, old), self._counts(topology, new)
        return {name: round((after[name] - before[name]) / seconds, 3) for name in self.COUNTERS}

    def snapshot(self, entries: Iterable[Entry], grant: Grant) -> list[dict[str, Any]]:
        """Per topology: rates now, counts over the window, rates per sample (the
        sparklines), lag per partition, and latency percentiles of recent outputs visible
        to `grant`. Counts and lag are the topics' (every tenant's traffic)."""
        latencies = self._latencies(entries, grant)
        samples = list(self.samples)
        answer = []
        for topology in self.topologies:
            row: dict[str, Any] = {
                "topology": topology.name,
                "version": topology.version,
                "input_topic": topology.input_topic,
            }
            if samples:
                new = samples[-1]
                old = next((s for s in samples if new.at - s.at <= RATE_S), new)
                if old is new and len(samples) > 1:
                    old = samples[-2]
                first = self._counts(topology, samples[0])
                last = self._counts(topology, new)
                row["rates"] = self._rates(topology, old, new)
                row["window"] = {
                    "seconds": round(new.at - samples[0].at, 1),
                    **{name: last[name] - first[name] for name in self.COUNTERS},
                }
                row["history"] = [self._rates(topology, a, b) for a, b in pairwise(samples)]
                row["partitions"] = [
                    {
                        "partition": p,
                        "end": end,
                        "committed": new.committed.get((t, p)),
                        "lag": end - new.committed.get((t, p), 0),
                    }
                    for (t, p), end in sorted(new.ends.items())
                    if t == topology.input_topic
                ]
                row["in_flight"] = sum(p["lag"] for p in row["partitions"])
            values = latencies.get(topology.name, [])
            row["latency_ms"] = {
                "p50": percentile(values, 0.5),
                "p95": percentile(values, 0.95),
                "outputs": len(values),
            }
            answer.append(row)
        return answer

    def _latencies(self, entries: Iterable[Entry], grant: Grant) -> dict[str, list[float]]:
        """Latencies of the newest outputs per topology visible to `grant`; each output's
        record is parsed once (remembered by its place while it stays among the newest)."""
        found: dict[str, list[float]] = {}
        remembered: dict[tuple[str, int, int], float | None] = {}
        full = 0
        for entry in entries:
            if entry.record_type != "output" or not grant.sees(entry.tenant):
                continue
            values = found.setdefault(entry.topology, [])
            if len(values) >= LATENCY_OUTPUTS:
                continue
            place = (entry.topic, entry.partition, entry.offset)
            latency = self._parsed[place] if place in self._parsed else latency_of(entry)
            remembered[place] = latency
            if latency is not None:
                values.append(latency)
                full += len(values) == LATENCY_OUTPUTS
                if full == len(self.topologies):
                    break  # every topology has its share: older outputs are not read
        self._parsed.update(remembered)
        if len(self._parsed) > 4 * LATENCY_OUTPUTS * max(1, len(self.topologies)):
            self._parsed = remembered
        return found

    async def run(self, offsets: Offsets, group: str, every_s: float) -> None:
        """Sample forever (cancel to stop); a broker outage leaves a gap."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                ends, committed = await offsets.sample(self.topics(), group)
                self.record(Sample(loop.time(), ends, committed))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker went away: try again next round
                log.warning("console: cannot read offsets (%s)", exc)
            await asyncio.sleep(every_s)


def latency_of(entry: Entry) -> float | None:
    """An output's `totals.latency_ms`, None when it has none."""
    try:
        latency = orjson.loads(entry.value)["totals"]["latency_ms"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return float(latency) if isinstance(latency, int | float) else None


class KafkaOffsets:
    """End offsets with a consumer of no group, commits with the admin client."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._consumer: Any = None
        self._admin: Any = None
        self._starting = asyncio.Lock()  # the console and a stream may ask at once

    async def _clients(self) -> tuple[Any, Any]:
        async with self._starting:
            return await self._start_clients()

    async def _start_clients(self) -> tuple[Any, Any]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                **client_options(),
                group_id=None,
                enable_auto_commit=False,
                client_id="llmflow-gateway-console",
            )
            await consumer.start()
            self._consumer = consumer
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                **client_options(),
                client_id="llmflow-gateway-console",
            )
            await admin.start()
            self._admin = admin
        return self._consumer, self._admin

    async def sample(self, topics: list[str], group: str) -> tuple[dict[TP, int], dict[TP, int]]:
        try:
            ends = await self.ends(topics)
            _, admin = await self._clients()
            offsets = await admin.list_consumer_group_offsets(group)
        except Exception:
            await self.close()
            raise
        committed = {
            (tp.topic, tp.partition): meta.offset
            for tp, meta in offsets.items()
            if tp.topic in topics and meta.offset >= 0
        }
        return ends, committed

    async def ends(self, topics: list[str]) -> dict[TP, int]:
        """The end offsets of every partition of `topics` that exists."""
        from aiokafka import TopicPartition

        from llmflow.services.gateway.follow import partitions

        consumer, _ = await self._clients()
        existing = await partitions(consumer, topics)
        tps = [TopicPartition(t, p) for t, numbers in existing.items() for p in numbers]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}

    async def close(self) -> None:
        consumer, admin = self._consumer, self._admin
        self._consumer = self._admin = None
        try:
            if consumer is not None:
                await consumer.stop()
            if admin is not None:
                await admin.close()
        except Exception as exc:  # closing after an outage
            log.debug("console: closing a client: %s", exc)
