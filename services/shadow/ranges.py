"""Which records of the live input topic a replay reads: per partition, `[start, end)`.

A range is given by time (`--from`/`--to`, the records' timestamps) or by offsets
(`--offsets 0:100-199,1:0-49`, or `100-199` for every partition; both ends included). It is
resolved once, at start: an open end is the partition's end at that moment, so a replay
always finishes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llmflow.errors import LlmflowError


class RangeError(LlmflowError):
    """A range that cannot be read as written."""


@dataclass(frozen=True, slots=True)
class PartitionRange:
    partition: int
    start: int
    end: int
    """Exclusive."""

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


_OFFSETS = re.compile(r"^(?:(?P<partition>\d+):)?(?P<start>\d+)?-(?P<end>\d+)?$")


def parse_offsets(text: str) -> dict[int | None, tuple[int | None, int | None]]:
    """`0:100-199,1:0-` -> {0: (100, 199), 1: (0, None)}: first and last offset, both read;
    `100-199` applies to every partition (key None). An open side is the partition's
    beginning or end."""
    ranges: dict[int | None, tuple[int | None, int | None]] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = _OFFSETS.match(part)
        if match is None:
            raise RangeError(f"offsets {part!r}: write PARTITION:FIRST-LAST or FIRST-LAST")
        partition = None if match["partition"] is None else int(match["partition"])
        start = None if match["start"] is None else int(match["start"])
        end = None if match["end"] is None else int(match["end"])
        if start is not None and end is not None and end < start:
            raise RangeError(f"offsets {part!r}: the end comes before the start")
        if partition in ranges:
            raise RangeError(f"offsets {part!r}: partition given twice")
        ranges[partition] = (start, end)
    if not ranges:
        raise RangeError("offsets: nothing given")
    if None in ranges and len(ranges) > 1:
        raise RangeError("offsets: give FIRST-LAST for every partition, or PARTITION:FIRST-LAST")
    return ranges


def parse_time(text: str) -> datetime:
    """ISO 8601; `Z` or an offset, or UTC when none is given (`2026-11-20T00:00Z`)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise RangeError(f"time {text!r}: write it as ISO 8601, e.g. 2026-11-20T00:00Z") from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def resolve(
    consumer: Any,
    topic: str,
    partitions: int,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    offsets: dict[int | None, tuple[int | None, int | None]] | None = None,
) -> list[PartitionRange]:
    """The range of every partition of `topic` (`partitions` of them), read by the aiokafka
    `consumer`: by time or by offsets (not both), clamped to what the partition holds now."""
    from aiokafka import TopicPartition

    if offsets is not None and (start is not None or end is not None):
        raise RangeError("give a time range or offsets, not both")
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    if offsets is not None:
        unknown = sorted(p for p in offsets if p is not None and p >= partitions)
        if unknown:
            raise RangeError(f"topic {topic!r} has no partition {unknown[0]}")
    first = await consumer.beginning_offsets(tps)
    last = await consumer.end_offsets(tps)
    starts = await _at(consumer, tps, start, last) if start else first
    ends = await _at(consumer, tps, end, last) if end else last
    ranges = []
    for tp in tps:
        lo, hi = starts[tp], ends[tp]
        if offsets is not None:
            wanted = offsets.get(tp.partition, offsets.get(None))
            if wanted is None:
                continue  # a partition not named is not read
            lo = first[tp] if wanted[0] is None else wanted[0]
            hi = last[tp] if wanted[1] is None else wanted[1] + 1  # END is inclusive
        lo = min(max(lo, first[tp]), last[tp])
        hi = min(max(hi, lo), last[tp])
        ranges.append(PartitionRange(tp.partition, lo, hi))
    return ranges


async def _at(
    consumer: Any, tps: list[Any], when: datetime, last: dict[Any, int]
) -> dict[Any, int]:
    """The first offset of each partition at or after `when` (its end if none is)."""
    found = await consumer.offsets_for_times({tp: int(when.timestamp() * 1000) for tp in tps})
    return {tp: last[tp] if found.get(tp) is None else found[tp].offset for tp in tps}
