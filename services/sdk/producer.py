"""Publish events to Kafka with kafka-python: durable (acks=all, idempotent) by default."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from kafka import KafkaProducer

from llmflow.schemas.events import AnyEvent
from llmflow.services.broker.security import client_options


class EventProducer:
    """Sends events keyed by their business key, so one key stays in one partition."""

    def __init__(self, bootstrap_servers: str, **config: Any) -> None:
        defaults: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "client_id": "llmflow-producer",
        }
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers, **(defaults | client_options() | config)
        )

    def send(self, topic: str, event: AnyEvent) -> Any:
        """Queue a validated event; returns kafka-python's future of the record metadata."""
        return self.send_raw(topic, event.model_dump_json().encode(), key=event.key)

    def send_raw(self, topic: str, value: bytes, key: str | None = None) -> Any:
        """Queue bytes as they are (for replays and for testing how workers treat bad input)."""
        return self._producer.send(topic, value=value, key=key.encode() if key else None)

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()
        self.close()
