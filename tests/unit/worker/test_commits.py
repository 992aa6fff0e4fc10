"""faust commits only offsets that were acked, also while it rebalances."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from intervaltree import IntervalTree  # type: ignore[import-untyped]

from llmflow.services.worker import commits

TP0 = TP("in", 0)


def _consumer(acked: list[int], committed: int | None, rebalancing: bool = False) -> Any:
    return SimpleNamespace(
        _acked=defaultdict(list, {TP0: sorted(acked)}),
        _acked_index=defaultdict(set, {TP0: set(acked)}),
        _committed_offset=defaultdict(lambda: None, {TP0: committed}),
        _gap=defaultdict(IntervalTree),
        app=SimpleNamespace(rebalancing=rebalancing),
    )


@pytest.mark.parametrize(
    ("acked", "committed", "rebalancing", "expected"),
    [
        ([10, 11, 12], 10, False, 13),  # contiguous from the commit
        ([11, 12], 10, False, None),  # offset 10 never acked (faust committed 13)
        ([17, 18], 10, False, None),
        ([0, 1], None, False, 2),  # a partition never committed, nothing read yet
    ],
)
def test_nothing_is_committed_past_an_offset_never_acked(
    acked: list[int], committed: int | None, rebalancing: bool, expected: int | None
) -> None:
    consumer = _consumer(acked, committed, rebalancing)
    assert commits._new_offset(consumer, TP0) == expected


def test_a_known_gap_is_no_hole() -> None:
    consumer = _consumer([13, 14], 10)
    consumer._gap[TP0].addi(10, 13)  # offsets 10..12 hold no records (transaction markers)
    assert commits._new_offset(consumer, TP0) == 15
