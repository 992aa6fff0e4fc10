"""A safety net under faust: offsets of a partition that the consumer skipped are read again.

faust-streaming drops records in some rebalance paths (buffered records cleared while the
read position moves on) and then commits past them, because its commit only looks for
consecutive acked offsets. Records of one partition reach the agent in offset order, so a
jump means records went missing (or, rarely, offsets that hold no record: transaction
markers, compaction). On a jump the partition is sought back to the first missing offset,
once per jump: records that were answered are skipped by their answered marks, missing ones
are answered, and a jump that comes back after the seek is a real gap and is accepted.
"""

from __future__ import annotations

from llmflow.services.worker.state import Committed


class OffsetContinuity:
    """Watches the offsets of one topic's partitions as the agent takes them."""

    def __init__(self, committed: Committed) -> None:
        self._committed = committed
        self._last: dict[int, int] = {}
        self._sought: dict[int, int] = {}

    def missing_from(self, partition: int, offset: int) -> int | None:
        """The first offset skipped before `offset`, if records went missing; else None."""
        last = self._last.get(partition)
        self._last[partition] = offset if last is None else max(last, offset)
        if last is None or offset <= last + 1:
            return None
        start = last + 1
        committed = self._committed(partition)
        if committed is not None:
            start = max(start, committed)  # below the commit: another worker's business
        if offset <= start or self._sought.get(partition) == start:
            return None
        self._sought[partition] = start
        return start
