"""Replay ranges: parsing `--offsets` and `--from`/`--to`, and resolving them against what
each partition holds (a fake aiokafka consumer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aiokafka import TopicPartition

from llmflow.services.shadow.ranges import (
    PartitionRange,
    RangeError,
    parse_offsets,
    parse_time,
    resolve,
)

TOPIC = "in"


@dataclass(frozen=True, slots=True)
class Found:
    """aiokafka's OffsetAndTimestamp, as far as `resolve` reads it."""

    offset: int
    timestamp: int


class FakeConsumer:
    """Partitions holding `[first, last)`; record `n` of a partition has timestamp
    `base_ms + n * 1000` (one record a second)."""

    def __init__(self, bounds: dict[int, tuple[int, int]], base_ms: int = 1_000_000) -> None:
        self.bounds = bounds
        self.base_ms = base_ms
        self.asked_times: list[dict[TopicPartition, int]] = []

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.bounds[tp.partition][0] for tp in tps}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.bounds[tp.partition][1] for tp in tps}

    async def offsets_for_times(
        self, times: dict[TopicPartition, int]
    ) -> dict[TopicPartition, Found | None]:
        self.asked_times.append(dict(times))
        found: dict[TopicPartition, Found | None] = {}
        for tp, ms in times.items():
            first, last = self.bounds[tp.partition]
            at = next(
                (n for n in range(first, last) if self.base_ms + n * 1000 >= ms),
                None,
            )
            found[tp] = None if at is None else Found(at, self.base_ms + at * 1000)
        return found

    def time_of(self, offset: int) -> datetime:
        return datetime.fromtimestamp((self.base_ms + offset * 1000) / 1000, UTC)


# --- parse_offsets ------------------------------------------------------------------------


def test_per_partition_offsets_with_an_open_end() -> None:
    assert parse_offsets("0:100-199,1:0-") == {0: (100, 199), 1: (0, None)}


def test_offsets_for_every_partition() -> None:
    assert parse_offsets("100-199") == {None: (100, 199)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-199", {None: (None, 199)}),
        ("100-", {None: (100, None)}),
        ("-", {None: (None, None)}),
        ("2:-5", {2: (None, 5)}),
        (" 0:1-1 , 3:7- ", {0: (1, 1), 3: (7, None)}),
    ],
)
def test_open_sides_and_spaces(
    text: str, expected: dict[int | None, tuple[int | None, int | None]]
) -> None:
    assert parse_offsets(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "write PARTITION:FIRST-LAST"),
        ("0:100", "write PARTITION:FIRST-LAST"),
        ("0:1-2-3", "write PARTITION:FIRST-LAST"),
        ("x:1-2", "write PARTITION:FIRST-LAST"),
        ("200-100", "the end comes before the start"),
        ("0:5-4", "the end comes before the start"),
        ("0:1-2,0:5-6", "partition given twice"),
        ("1-2,3-4", "partition given twice"),
        ("0:1-2,5-9", "give FIRST-LAST for every partition"),
        ("5-9,0:1-2", "give FIRST-LAST for every partition"),
        ("", "nothing given"),
        (" , ,", "nothing given"),
    ],
)
def test_offsets_that_cannot_be_read(text: str, message: str) -> None:
    with pytest.raises(RangeError, match=message):
        parse_offsets(text)


# --- parse_time ---------------------------------------------------------------------------


def test_time_with_z_is_utc() -> None:
    assert parse_time("2026-11-20T00:00Z") == datetime(2026, 11, 20, tzinfo=UTC)


def test_time_keeps_its_offset() -> None:
    when = parse_time("2026-11-20T02:00+02:00")
    assert when.utcoffset() == timedelta(hours=2)
    assert when == datetime(2026, 11, 20, tzinfo=UTC)


def test_naive_time_is_utc() -> None:
    when = parse_time(" 2026-11-20T05:30 ")
    assert when.tzinfo is UTC
    assert when == datetime(2026, 11, 20, 5, 30, tzinfo=UTC)


def test_date_only_is_midnight_utc() -> None:
    assert parse_time("2026-11-20") == datetime(2026, 11, 20, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01T00:00Z", "20/11/2026"])
def test_time_that_cannot_be_read(text: str) -> None:
    with pytest.raises(RangeError, match="ISO 8601"):
        parse_time(text)


# --- resolve ------------------------------------------------------------------------------


async def test_no_range_reads_every_partition_from_beginning_to_end() -> None:
    consumer = FakeConsumer({0: (0, 10), 1: (5, 5), 2: (3, 8)})
    ranges = await resolve(consumer, TOPIC, 3)
    assert ranges == [PartitionRange(0, 0, 10), PartitionRange(1, 5, 5), PartitionRange(2, 3, 8)]
    assert [r.size for r in ranges] == [10, 0, 5]
    assert consumer.asked_times == []


async def test_offsets_end_is_inclusive_and_partitions_not_named_are_skipped() -> None:
    consumer = FakeConsumer({0: (0, 1000), 1: (0, 1000), 2: (0, 1000)})
    ranges = await resolve(consumer, TOPIC, 3, offsets={0: (100, 199), 2: (0, 0)})
    assert ranges == [PartitionRange(0, 100, 200), PartitionRange(2, 0, 1)]
    assert ranges[0].size == 100


async def test_offsets_for_every_partition_apply_to_each() -> None:
    consumer = FakeConsumer({0: (0, 50), 1: (0, 500)})
    ranges = await resolve(consumer, TOPIC, 2, offsets={None: (10, 99)})
    assert ranges == [PartitionRange(0, 10, 50), PartitionRange(1, 10, 100)]


async def test_offsets_are_clamped_to_what_the_partition_holds() -> None:
    # Partition 0 holds [20, 60): a start before it and an end after it are clamped; on
    # partition 1 the whole range lies past the end and reads nothing.
    consumer = FakeConsumer({0: (20, 60), 1: (0, 10)})
    ranges = await resolve(consumer, TOPIC, 2, offsets={0: (5, 500), 1: (30, 40)})
    assert ranges == [PartitionRange(0, 20, 60), PartitionRange(1, 10, 10)]
    assert ranges[1].size == 0


async def test_open_offset_sides_are_the_partitions_beginning_and_end() -> None:
    consumer = FakeConsumer({0: (20, 60), 1: (7, 90)})
    ranges = await resolve(consumer, TOPIC, 2, offsets={0: (None, 29), 1: (40, None)})
    assert ranges == [PartitionRange(0, 20, 30), PartitionRange(1, 40, 90)]


async def test_offsets_of_an_unknown_partition() -> None:
    consumer = FakeConsumer({0: (0, 10), 1: (0, 10)})
    with pytest.raises(RangeError, match="has no partition 2"):
        await resolve(consumer, TOPIC, 2, offsets={0: (0, 1), 2: (0, 1)})


async def test_time_and_offsets_together_are_refused() -> None:
    consumer = FakeConsumer({0: (0, 10)})
    when = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(RangeError, match="not both"):
        await resolve(consumer, TOPIC, 1, start=when, offsets={None: (0, 1)})
    with pytest.raises(RangeError, match="not both"):
        await resolve(consumer, TOPIC, 1, end=when, offsets={0: (0, 1)})


async def test_time_range_reads_from_the_first_record_at_start_to_the_first_at_end() -> None:
    consumer = FakeConsumer({0: (0, 100), 1: (50, 100)})
    start, end = consumer.time_of(10), consumer.time_of(20)
    ranges = await resolve(consumer, TOPIC, 2, start=start, end=end)
    # Partition 1 begins after `end`: its first record at or after either time is 50.
    assert ranges == [PartitionRange(0, 10, 20), PartitionRange(1, 50, 50)]
    assert consumer.asked_times[0] == {
        TopicPartition(TOPIC, 0): int(start.timestamp() * 1000),
        TopicPartition(TOPIC, 1): int(start.timestamp() * 1000),
    }


async def test_time_after_every_record_is_the_end() -> None:
    consumer = FakeConsumer({0: (0, 100), 1: (0, 30)})
    ranges = await resolve(consumer, TOPIC, 2, start=consumer.time_of(25))
    assert ranges == [PartitionRange(0, 25, 100), PartitionRange(1, 25, 30)]
    # No record of either partition is at or after `late`: both start and end are the end.
    late = consumer.time_of(1000)
    ranges = await resolve(consumer, TOPIC, 2, start=late)
    assert ranges == [PartitionRange(0, 100, 100), PartitionRange(1, 30, 30)]
    ranges = await resolve(consumer, TOPIC, 2, end=late)
    assert ranges == [PartitionRange(0, 0, 100), PartitionRange(1, 0, 30)]


async def test_time_with_an_offset_is_the_same_instant() -> None:
    consumer = FakeConsumer({0: (0, 100)})
    utc = consumer.time_of(40)
    shifted = utc.astimezone(timezone(timedelta(hours=-5)))
    assert await resolve(consumer, TOPIC, 1, start=shifted) == [PartitionRange(0, 40, 100)]


async def test_end_time_before_start_time_reads_nothing() -> None:
    consumer = FakeConsumer({0: (0, 100)})
    ranges = await resolve(consumer, TOPIC, 1, start=consumer.time_of(60), end=consumer.time_of(30))
    assert ranges == [PartitionRange(0, 60, 60)]
    assert ranges[0].size == 0


def test_partition_range_size_is_never_negative() -> None:
    assert PartitionRange(0, 10, 5).size == 0
    assert PartitionRange(0, 5, 10).size == 5
