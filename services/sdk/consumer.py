"""Read outputs and dead letters from Kafka with kafka-python."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from kafka import KafkaConsumer

from schemas.dead_letter import DeadLetter
from schemas.outputs import Output


def parse_result(value: bytes) -> Output | DeadLetter:
    """An output, or a dead letter (recognised by its `stage` field)."""
    data = json.loads(value)
    if isinstance(data, dict) and "stage" in data:
        return DeadLetter.model_validate(data)
    return Output.model_validate(data)


class ResultConsumer:
    """Iterates results from one or more topics until `idle_timeout_s` passes without one."""

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
            "group_id": group_id or f"llmflow-consume-{uuid.uuid4().hex[:8]}",
            "auto_offset_reset": "earliest" if from_beginning else "latest",
            "enable_auto_commit": True,
            "client_id": "llmflow-consumer",
        }
        self._consumer = KafkaConsumer(
            *topics, bootstrap_servers=bootstrap_servers, **(defaults | config)
        )

    def records(self, idle_timeout_s: float = 10.0, limit: int | None = None) -> Iterator[Any]:
        """Raw kafka-python records (topic, partition, offset, key, value, headers)."""
        seen = 0
        idle_since = time.monotonic()
        while limit is None or seen < limit:
            batch = self._consumer.poll(timeout_ms=200)
            if not batch:
                if time.monotonic() - idle_since > idle_timeout_s:
                    return
                continue
            idle_since = time.monotonic()
            for records in batch.values():
                for record in records:
                    yield record
                    seen += 1
                    if limit is not None and seen >= limit:
                        return

    def results(
        self, idle_timeout_s: float = 10.0, limit: int | None = None
    ) -> Iterator[Output | DeadLetter]:
        for record in self.records(idle_timeout_s, limit):
            yield parse_result(record.value)

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
