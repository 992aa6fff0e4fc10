"""Read outputs and dead letters from Kafka with kafka-python."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from llmflow.schemas.results import RESULT_ADAPTER
from llmflow.schemas.results import Result as Result  # re-exported: callers annotate with it
from llmflow.services.broker.security import client_options

# Results remembered for de-duplication; redeliveries arrive within minutes, not millions.
_REMEMBERED = 1_000_000
# With a group, how often what was handed out is committed while records keep coming.
_COMMIT_EVERY_S = 5.0
# With a group, how long its join may take on top of the idle timeout.
_JOIN_WAIT_S = 60.0


class _Membership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Whether the consumer has joined its group (with or without partitions)."""

    def __init__(self) -> None:
        self.joined = False

    def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.joined = True


def parse_result(value: bytes) -> Result:
    """An output, a dead letter or a parked event, as its `record_type` says.

    Raises pydantic.ValidationError, also for records without `record_type` (schema version 1).
    """
    return RESULT_ADAPTER.validate_json(value)


def identity(result: Result) -> str:
    """The event a result answers: its id, or where it was read for unreadable events."""
    if result.event_id is not None:
        return f"id:{result.event_id}"
    return f"at:{result.source_topic}:{result.source_partition}:{result.source_offset}"


class ResultConsumer:
    """Iterates results from one or more topics until `idle_timeout_s` passes without one.

    Without `group_id` it reads every partition itself, joins no group and commits
    nothing: it leaves no trace on the cluster. With one it joins that consumer group,
    starts at the group's committed offsets, shares the partitions with the group's other
    members and commits the records it has handed out (every few seconds and on `close`):
    a consumer that stops at a `limit` leaves the next one exactly the records after.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: list[str],
        *,
        group_id: str | None = None,
        from_beginning: bool = True,
        **config: Any,
    ) -> None:
        defaults: dict[str, Any] = {
            # Without a group the consumer reads every partition by itself, and follows
            # topics and partitions created later through metadata alone. A throwaway
            # group added a join per consumer and, on a busy broker, once left it with
            # no partitions for minutes.
            "group_id": group_id,
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            # Not auto-commit: it commits what was polled, and a batch polled past a
            # `limit` would be skipped by the group's next consumer (`commit`).
            "enable_auto_commit": False,
            "client_id": "llmflow-consumer",
            # A topic the pipeline has not created yet is picked up within 5 s of its
            # creation, not after kafka-python's default metadata age of 5 minutes.
            "metadata_max_age_ms": 5000,
        }
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers, **(defaults | client_options() | config)
        )
        membership = _Membership() if group_id is not None else None
        consumer.subscribe(topics, listener=membership)
        self._attach(consumer, grouped=group_id is not None, membership=membership)

    def _attach(
        self, consumer: Any, *, grouped: bool, membership: _Membership | None = None
    ) -> None:
        """Read through `consumer` (a KafkaConsumer, or a stand-in in tests)."""
        self._consumer = consumer
        self._grouped = grouped
        self._membership = membership
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Polled but not yet handed out: a call that stops at its `limit` leaves the rest
        # of the batch here for the next call instead of dropping it.
        self._polled: deque[Any] = deque()
        # Per partition, the offset after the last record handed out and not yet committed.
        self._handed: dict[TopicPartition, int] = {}
        self._committed_at = time.monotonic()
        self.duplicates = 0
        """Results dropped by `results(distinct=True)` because their event was seen before."""

    def records(self, idle_timeout_s: float = 10.0, limit: int | None = None) -> Iterator[Any]:
        """Raw kafka-python records (topic, partition, offset, key, value, headers)."""
        seen = 0
        idle_since = time.monotonic()
        joined = self._joined()
        while limit is None or seen < limit:
            if not self._polled:
                if time.monotonic() - self._committed_at > _COMMIT_EVERY_S:
                    self.commit()
                batch = self._consumer.poll(timeout_ms=200)
                if not batch:
                    if not joined and self._joined():
                        # A group's join takes seconds (a broker delays the first
                        # rebalance of a group by 3 s by default): idle from here on.
                        joined, idle_since = True, time.monotonic()
                    waited = time.monotonic() - idle_since
                    if waited > idle_timeout_s + (0 if joined else _JOIN_WAIT_S):
                        return
                    continue
                idle_since = time.monotonic()
                for records in batch.values():
                    self._polled.extend(records)
            record = self._polled.popleft()
            self._handed[TopicPartition(record.topic, record.partition)] = record.offset + 1
            yield record
            seen += 1

    def results(
        self, idle_timeout_s: float = 10.0, limit: int | None = None, *, distinct: bool = True
    ) -> Iterator[Result]:
        """Parsed results; with `distinct`, each event once (see `duplicates`).

        Workers skip records they answered already, but a worker killed between publishing
        a result and recording it leaves a second copy in the topic; this drops it.
        """
        yielded = 0
        for record in self.records(idle_timeout_s):
            result = parse_result(record.value)
            if distinct:
                key = identity(result)
                if key in self._seen:
                    self.duplicates += 1
                    continue
                self._seen[key] = None
                if len(self._seen) > _REMEMBERED:
                    self._seen.popitem(last=False)
            yield result
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    def _joined(self) -> bool:
        """Without a group, always; with one, once it has joined the group."""
        return self._membership is None or self._membership.joined

    def commit(self) -> None:
        """With a group, commit the records handed out so far; without one, nothing."""
        self._committed_at = time.monotonic()
        if not self._grouped or not self._handed:
            return
        offsets = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in self._handed.items()}
        self._consumer.commit(offsets)
        self._handed.clear()

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._consumer.close(autocommit=False)

    def __enter__(self) -> ResultConsumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
