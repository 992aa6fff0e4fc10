"""Offsets as ranges: what a partition's answered-marks record holds."""

from __future__ import annotations

import random

import pytest

from llmflow.services.worker.offsets import OffsetRanges


def _ranges_of(offsets: set[int]) -> list[list[int]]:
    """The expected encoding, computed the slow way."""
    ranges: list[list[int]] = []
    for offset in sorted(offsets):
        if ranges and ranges[-1][1] == offset - 1:
            ranges[-1][1] = offset
        else:
            ranges.append([offset, offset])
    return ranges


def test_contiguous_offsets_take_one_range_whatever_their_order() -> None:
    marks = OffsetRanges()
    for offset in (5, 3, 4, 7, 6, 9):
        marks.add(offset)
    assert marks.encode() == [[3, 7], [9, 9]]
    marks.add(8)  # fills the gap: the two ranges become one
    assert marks.encode() == [[3, 9]]
    assert len(marks) == 7 and marks.ranges == 1
    assert 3 in marks and 9 in marks and 2 not in marks and 10 not in marks


def test_offsets_below_the_commit_are_dropped() -> None:
    marks = OffsetRanges([(0, 4), (6, 9), (12, 12)])
    marks.drop_below(7)
    assert marks.encode() == [[7, 9], [12, 12]]
    marks.drop_below(10)
    assert marks.encode() == [[12, 12]]
    marks.drop_below(100)
    assert marks.encode() == [] and 12 not in marks


def test_a_record_reads_back_as_it_was_written() -> None:
    written = OffsetRanges([(10, 20), (3, 3), (21, 25), (40, 41)]).encode()
    assert written == [[3, 3], [10, 25], [40, 41]]  # sorted, adjacent ranges merged
    assert OffsetRanges.decode(written).encode() == written
    assert OffsetRanges.decode([]).encode() == []


@pytest.mark.parametrize(
    "value", [{"0": 1}, 1, [[1]], [[1, "2"]], [[5, 2]], [[-1, 3]], [[True, 2]], [1, 2]]
)
def test_a_record_that_is_not_ranges_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="offset range"):
        OffsetRanges.decode(value)


def test_random_marks_and_commits_agree_with_a_plain_set() -> None:
    rng = random.Random(5)
    marks, plain = OffsetRanges(), set[int]()
    floor = 0
    for step in range(3000):
        offset = floor + rng.randrange(300)  # out of order, as concurrent events finish
        marks.add(offset)
        plain.add(offset)
        if step % 97 == 0:
            floor += rng.randrange(60)
            marks.drop_below(floor)
            plain = {o for o in plain if o >= floor}
        assert (offset in marks) == (offset in plain)
    assert marks.encode() == _ranges_of(plain)
    assert len(marks) == len(plain)
    assert all((o in marks) == (o in plain) for o in range(floor - 5, floor + 400))
