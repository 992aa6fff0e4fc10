"""A replay's own pay-once state, in a compacted topic of its own (`<shadow topic>.state`).

Two kinds of keys: `paid:<partition>:<offset>:<call id>` holds an answer paid for while
replaying the event at that place, `done:<partition>:<offset>` an event whose shadow result
is published. A replay that is stopped or killed and started
again reads them back: events already done are not replayed, and answers already paid for
are reused. Both are deleted (tombstones) once the replay's consumer group has committed
past their event, so the state holds what is in flight, not what was replayed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from contextvars import ContextVar
from typing import Any

from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.broker.security import client_options

log = logging.getLogger(__name__)

# The event (partition, offset) the current task replays: answers are filed under it.
position: ContextVar[tuple[int, int]] = ContextVar("llmflow_replay_position")


class ReplayState:
    """Answers paid for and events done, kept in `topic` (one partition, compacted)."""

    def __init__(self, producer: Any, topic: str, owner: str = "") -> None:
        self._producer = producer
        self.topic = topic
        # Keys of one replay (its consumer group): replays of other ranges share the topic.
        self._prefix = f"{owner}|" if owner else ""
        self._paid: dict[str, tuple[str, ModelCallResult]] = {}  # call id -> (key, answer)
        self._done: set[tuple[int, int]] = set()
        self._keys: dict[tuple[int, int], set[str]] = defaultdict(set)  # event -> its keys

    async def load(self, bootstrap_servers: str) -> None:
        """Read the topic to its end (what a previous run of this replay left)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers, enable_auto_commit=False, **client_options()
        )
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        self.take(record.key, record.value)
        finally:
            await consumer.stop()

    def take(self, key: bytes | None, value: bytes | None) -> None:
        """A record of the state topic, read back: this replay's keys only (replays of
        other ranges share the topic); a key no replay writes is skipped."""
        text = key.decode(errors="replace") if key else ""
        own = text[len(self._prefix) :]
        if not text.startswith(self._prefix) or "|" in own:
            return
        try:
            self._apply(own, value)
        except (IndexError, ValueError):
            log.warning("replay state %s: a record with key %r skipped", self.topic, text[:80])

    def _apply(self, key: str, value: bytes | None) -> None:
        kind, partition, offset, call_id = [*key.split(":", 3), ""][:4]
        if kind not in ("paid", "done"):
            raise ValueError(kind)
        event = (int(partition), int(offset))
        if value is None:
            self._keys.get(event, set()).discard(key)
            if kind == "paid":
                self._paid.pop(call_id, None)
            else:
                self._done.discard(event)
            return
        self._keys[event].add(key)
        if kind == "paid":
            self._paid[call_id] = (key, ModelCallResult.model_validate_json(value))
        else:
            self._done.add(event)

    def get(self, call_id: str) -> ModelCallResult | None:
        found = self._paid.get(call_id)
        if found is None:
            return None
        key, paid = found
        self._keys[position.get()].add(key)  # whichever event commits first drops it
        return paid

    async def put(self, result: ModelCallResult) -> None:
        partition, offset = position.get()
        key = f"paid:{partition}:{offset}:{result.call_id}"
        self._keys[partition, offset].add(key)
        await self._send(key, result.model_dump_json().encode())
        self._paid[result.call_id] = (key, result)

    def done(self, partition: int, offset: int) -> bool:
        return (partition, offset) in self._done

    async def mark_done(self, partition: int, offset: int) -> None:
        key = f"done:{partition}:{offset}"
        self._keys[partition, offset].add(key)
        await self._send(key, b"1")
        self._done.add((partition, offset))

    async def forget_below(self, partition: int, committed: int) -> None:
        """The group committed `committed` on `partition`: drop what events before it left."""
        events = [e for e in self._keys if e[0] == partition and e[1] < committed]
        deliveries = []
        for event in events:
            self._done.discard(event)
            for key in sorted(self._keys.pop(event)):
                if key.startswith("paid:"):
                    self._paid.pop(key.split(":", 3)[3], None)
                deliveries.append(
                    await self._producer.send(self.topic, key=self._key(key), value=None)
                )
        if deliveries:
            await asyncio.gather(*deliveries)

    @property
    def size(self) -> int:
        """Keys held: bounded by the events not yet committed."""
        return len(self._paid) + len(self._done)

    async def _send(self, key: str, value: bytes) -> None:
        await (await self._producer.send(self.topic, key=self._key(key), value=value))

    def _key(self, key: str) -> bytes:
        return f"{self._prefix}{key}".encode()
