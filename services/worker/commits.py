"""faust commits only what was acked: a fix to its offset bookkeeping.

faust-streaming 0.15 commits the highest run of consecutive acked offsets of a partition.
It checks that the run starts where the last commit ended with an off-by-one: a single
missing offset passes. Here nothing is committed past an offset that was not acked or is
not a known gap, whenever the last commit is known. (While faust has forgotten it, during
a rebalance, its own rule applies; `continuity` is the net for records dropped then.)
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

_faust_new_offset = Consumer._new_offset


def _new_offset(self: Any, tp: TP) -> int | None:
    acked = self._acked[tp]
    if not acked:
        return None
    committed = self._committed_offset[tp]
    if committed is None:
        return _faust_new_offset(self, tp)  # never committed, or forgotten: faust's rule
    lowest = min(acked)
    if lowest > committed:
        gaps = self._gap[tp]
        gaps.merge_overlaps()
        known = sum(
            min(iv.end, lowest) - max(iv.begin, committed) for iv in gaps.overlap(committed, lowest)
        )
        if known < lowest - committed:
            return None  # offsets from `committed` on were never acked: wait for them
    return _faust_new_offset(self, tp)


def commit_only_what_was_acked() -> None:
    """Install the fix (idempotent)."""
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
