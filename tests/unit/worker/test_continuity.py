"""Offsets the consumer skipped are noticed once, and only above the committed offset."""

from __future__ import annotations

from llmflow.services.worker.continuity import OffsetContinuity


def test_a_jump_asks_for_the_first_missing_offset_once() -> None:
    committed: dict[int, int] = {}
    watch = OffsetContinuity(committed.get)
    assert [watch.missing_from(0, o) for o in (5, 6, 7)] == [None, None, None]
    assert watch.missing_from(0, 12) == 8  # 8..11 never came
    assert [watch.missing_from(0, o) for o in (8, 9, 10, 11, 12, 13)] == [None] * 6
    assert watch.missing_from(0, 20) == 14
    # Sought back to 14: if 14..19 hold no records (a real gap), 20 comes again, and is fine.
    assert watch.missing_from(0, 20) is None
    assert watch.missing_from(1, 40) is None  # partitions are watched apart


def test_offsets_below_the_commit_are_not_missing() -> None:
    committed = {0: 50}
    watch = OffsetContinuity(committed.get)
    watch.missing_from(0, 10)  # the partition went to another worker, and came back
    assert watch.missing_from(0, 50) is None
    assert watch.missing_from(0, 53) == 51
