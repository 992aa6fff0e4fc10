"""A `limit` stops the iteration, not the delivery: the rest of a polled batch waits."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from llmflow.services.sdk import ResultConsumer


class OneBatch:
    """Polls one batch of `count` records over two partitions, then nothing."""

    def __init__(self, count: int) -> None:
        self.batches: list[dict[str, list[int]]] = [
            {"p0": list(range(0, count, 2)), "p1": list(range(1, count, 2))}
        ]

    def poll(self, timeout_ms: int) -> dict[str, list[int]]:
        return self.batches.pop() if self.batches else {}


def test_records_left_by_a_limit_come_with_the_next_call() -> None:
    consumer: Any = ResultConsumer.__new__(ResultConsumer)
    consumer._consumer, consumer._polled = OneBatch(10), deque()
    consumer._seen, consumer.duplicates = OrderedDict(), 0
    first = list(consumer.records(idle_timeout_s=0, limit=3))
    rest = list(consumer.records(idle_timeout_s=0))
    assert len(first) == 3 and sorted(first + rest) == list(range(10))
