"""A `limit` stops the iteration, not the delivery: the rest of a polled batch waits, and
a consumer in a group commits only what it handed out."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from kafka.structs import TopicPartition

from llmflow.services.sdk import ResultConsumer


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int


class OneBatch:
    """Polls one batch of `count` records over two partitions, then nothing; keeps what
    was committed."""

    def __init__(self, count: int) -> None:
        self.batches: list[dict[str, list[Record]]] = [
            {
                "p0": [Record("t", 0, n) for n in range(0, count, 2)],
                "p1": [Record("t", 1, n) for n in range(1, count, 2)],
            }
        ]
        self.committed: dict[TopicPartition, int] = {}
        self.closed = False

    def poll(self, timeout_ms: int) -> dict[str, list[Record]]:
        return self.batches.pop() if self.batches else {}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committed |= {tp: meta.offset for tp, meta in offsets.items()}

    def close(self, autocommit: bool = True) -> None:
        self.closed = True


def _consumer(source: OneBatch, *, grouped: bool) -> ResultConsumer:
    consumer = ResultConsumer.__new__(ResultConsumer)
    consumer._attach(source, grouped=grouped)
    return consumer


def test_records_left_by_a_limit_come_with_the_next_call() -> None:
    consumer = _consumer(OneBatch(10), grouped=False)
    first = [r.offset for r in consumer.records(idle_timeout_s=0, limit=3)]
    rest = [r.offset for r in consumer.records(idle_timeout_s=0)]
    assert len(first) == 3 and sorted(first + rest) == list(range(10))


def test_a_group_commits_what_was_handed_out_not_what_was_polled() -> None:
    source = OneBatch(10)
    consumer = _consumer(source, grouped=True)
    handed = list(consumer.records(idle_timeout_s=0, limit=3))
    consumer.close()
    assert source.closed
    # The next record of each partition is where the group's next consumer starts.
    expected = {}
    for record in handed:
        expected[TopicPartition(record.topic, record.partition)] = record.offset + 1
    assert source.committed == expected


def test_without_a_group_nothing_is_committed() -> None:
    source = OneBatch(4)
    consumer = _consumer(source, grouped=False)
    assert len(list(consumer.records(idle_timeout_s=0))) == 4
    consumer.close()
    assert source.committed == {} and source.closed


class LateJoin(OneBatch):
    """A group member whose join completes only after a few empty polls."""

    def __init__(self, membership: Any, empty_polls: int) -> None:
        super().__init__(2)
        self.membership, self.empty_polls = membership, empty_polls

    def poll(self, timeout_ms: int) -> dict[str, list[Record]]:
        if self.empty_polls:
            time.sleep(timeout_ms / 1000)  # as a poll that finds nothing does
            self.empty_polls -= 1
            self.membership.joined = self.empty_polls == 0
            return {}
        return super().poll(timeout_ms)


def test_the_idle_timeout_of_a_group_member_starts_once_it_joined() -> None:
    from llmflow.services.sdk.consumer import _Membership

    membership = _Membership()
    consumer = ResultConsumer.__new__(ResultConsumer)
    consumer._attach(LateJoin(membership, empty_polls=3), grouped=True, membership=membership)
    # Three empty polls take 0.6 s, far over the idle timeout, but come before the join.
    assert len(list(consumer.records(idle_timeout_s=0.1))) == 2
