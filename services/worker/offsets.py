"""A set of Kafka offsets kept as sorted, disjoint, inclusive ranges.

The answered offsets of a partition that the group has not committed yet are mostly
contiguous (events finish about in order, `concurrency` at a time), so as ranges they take
a few pairs of numbers whatever their count: small enough to write the whole set in one
record each time an offset joins it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any


class OffsetRanges:
    """Offsets as `[[first, last], ...]`, sorted, disjoint and not adjacent (both ends in)."""

    __slots__ = ("_firsts", "_lasts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in ranges:
            for offset in (first, last):
                self.add(offset)
            if last > first:
                self._fill(first, last)

    @classmethod
    def decode(cls, value: Any) -> OffsetRanges:
        """The set a record holds; ValueError when it is not a list of `[first, last]`."""
        if not isinstance(value, list):
            raise ValueError(f"offset ranges must be a list, not {type(value).__name__}")
        pairs: list[tuple[int, int]] = []
        for pair in value:
            ok = isinstance(pair, list | tuple) and len(pair) == 2
            if not ok or not all(type(end) is int and end >= 0 for end in pair):
                raise ValueError(f"offset range {pair!r} is not [first, last]")
            if pair[1] < pair[0]:
                raise ValueError(f"offset range {pair!r} ends before it starts")
            pairs.append((pair[0], pair[1]))
        return cls(pairs)

    def encode(self) -> list[list[int]]:
        return [[first, last] for first, last in zip(self._firsts, self._lasts, strict=True)]

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        i = bisect.bisect_right(self._firsts, offset) - 1
        return i >= 0 and offset <= self._lasts[i]

    def __len__(self) -> int:
        """Offsets held (not ranges)."""
        return sum(last - first + 1 for first, last in zip(self._firsts, self._lasts, strict=True))

    @property
    def ranges(self) -> int:
        return len(self._firsts)

    def add(self, offset: int) -> None:
        """Add one offset, merging it with the ranges it touches."""
        i = bisect.bisect_right(self._firsts, offset) - 1  # the range starting at or before it
        if i >= 0 and offset <= self._lasts[i]:
            return  # held already
        joins_left = i >= 0 and self._lasts[i] == offset - 1
        joins_right = i + 1 < len(self._firsts) and self._firsts[i + 1] == offset + 1
        if joins_left and joins_right:
            self._lasts[i] = self._lasts[i + 1]
            del self._firsts[i + 1], self._lasts[i + 1]
        elif joins_left:
            self._lasts[i] = offset
        elif joins_right:
            self._firsts[i + 1] = offset
        else:
            self._firsts.insert(i + 1, offset)
            self._lasts.insert(i + 1, offset)

    def drop_below(self, offset: int) -> None:
        """Forget every offset under `offset` (the group committed past them)."""
        i = bisect.bisect_right(self._lasts, offset - 1)  # ranges wholly below
        del self._firsts[:i], self._lasts[:i]
        if self._firsts and self._firsts[0] < offset:
            self._firsts[0] = offset

    def _fill(self, first: int, last: int) -> None:
        """Make `[first, last]` one range (both ends are held already)."""
        i = bisect.bisect_right(self._firsts, first) - 1  # the range holding `first`
        j = bisect.bisect_right(self._firsts, last) - 1  # the one holding `last`
        self._lasts[i] = self._lasts[j]
        del self._firsts[i + 1 : j + 1], self._lasts[i + 1 : j + 1]
