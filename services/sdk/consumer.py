"""Read outputs and dead letters from Kafka with kafka-python."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from kafka import KafkaConsumer

from llmflow.schemas.results import RESULT_ADAPTER
from llmflow.schemas.results import Result as Result  # re-exported: callers annotate with it
from llmflow.services.broker.security import client_options

# Results remembered for de-duplication; redeliveries arrive within minutes, not millions.
_REMEMBERED = 1_000_000


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

    Without `group_id` it reads every partition itself and commits nothing; with one it
    joins that consumer group, shares the partitions with the group's other members and
    commits what it has read.
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
            "enable_auto_commit": group_id is not None,
            "client_id": "llmflow-consumer",
            # A topic the pipeline has not created yet is picked up within 5 s of its
            # creation, not after kafka-python's default metadata age of 5 minutes.
            "metadata_max_age_ms": 5000,
        }
        self._consumer = KafkaConsumer(
            *topics, bootstrap_servers=bootstrap_servers, **(defaults | client_options() | config)
        )
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Polled but not yet handed out: a call that stops at its `limit` leaves the rest
        # of the batch here for the next call instead of dropping it.
        self._polled: deque[Any] = deque()
        self.duplicates = 0
        """Results dropped by `results(distinct=True)` because their event was seen before."""

    def records(self, idle_timeout_s: float = 10.0, limit: int | None = None) -> Iterator[Any]:
        """Raw kafka-python records (topic, partition, offset, key, value, headers)."""
        seen = 0
        idle_since = time.monotonic()
        while limit is None or seen < limit:
            if not self._polled:
                batch = self._consumer.poll(timeout_ms=200)
                if not batch:
                    if time.monotonic() - idle_since > idle_timeout_s:
                        return
                    continue
                idle_since = time.monotonic()
                for records in batch.values():
                    self._polled.extend(records)
            yield self._polled.popleft()
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

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> ResultConsumer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
