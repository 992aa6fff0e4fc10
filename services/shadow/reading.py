"""Reading result topics to where they end now (not until they go quiet): a compare run
reads a fixed set of records, however busy the live topics are."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from pydantic import ValidationError

from llmflow.services.broker.security import client_options
from llmflow.services.sdk.consumer import Result, parse_result


class Stored(Mapping[str, Result]):
    """Results by key, kept as the bytes they were read from and parsed when looked up."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    def __setitem__(self, key: str, value: bytes) -> None:
        self._data[key] = value

    def __getitem__(self, key: str) -> Result:
        return parse_result(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(slots=True)
class Unreadable:
    """Records of the topics that are no result (another writer's, or damaged)."""

    count: int = 0


def read_with_bytes(
    bootstrap_servers: str, topics: list[str], unreadable: Unreadable | None = None
) -> Iterator[tuple[Result, bytes]]:
    """Every result in `topics` up to their end at the call, partition by partition in
    offset order, each with the bytes it was read from (a reader that keeps many results
    keeps their bytes, `Stored`: a tenth of the memory of the parsed models). Topics that
    do not exist read as empty."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        **client_options(),
        group_id=None,
        enable_auto_commit=False,
        client_id="llmflow-compare",
    )
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        left = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        while left:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    try:
                        yield parse_result(record.value), record.value
                    except (ValidationError, TypeError):
                        if unreadable is not None:
                            unreadable.count += 1
            left = {tp for tp in left if consumer.position(tp) < ends[tp]}
    finally:
        consumer.close()
