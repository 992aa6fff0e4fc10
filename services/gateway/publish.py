"""`POST /v1/topics/{topic}/events`: a body of one event or a batch, checked against the
contract as a whole before anything is sent, then produced (acks=all, idempotent, keyed by
the event's key as the SDK does) with a bound on what waits for the broker's acks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError
from pydantic_core import from_json

from llmflow.errors import LlmflowError
from llmflow.schemas.events import EVENT_ADAPTER, AnyEvent
from llmflow.services.gateway.auth import Grant


@dataclass(frozen=True, slots=True)
class EventError:
    """Why one event of a body was refused: its place in the batch, the field, the reason."""

    index: int
    field: str
    message: str
    forbidden: bool = False  # another tenant's event: 403 rather than 400

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class BodyError(LlmflowError):
    """The body as a whole is refused (not JSON, not an object or array, too many events)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_body(body: bytes, grant: Grant, max_events: int) -> list[AnyEvent] | list[EventError]:
    """The events of `body` (a JSON object, or an array of them), each published as the
    grant's tenant; or every error found, when any event is refused."""
    try:
        # pydantic's parser refuses lone surrogates (`"\ud800"`), as the worker's does.
        parsed = from_json(body)
    except ValueError as exc:
        raise BodyError(400, f"the body is not JSON: {exc}") from None
    items = parsed if isinstance(parsed, list) else [parsed]
    if not isinstance(parsed, list | dict):
        raise BodyError(400, "the body must be one event (an object) or an array of events")
    if not items:
        raise BodyError(400, "the batch is empty")
    if len(items) > max_events:
        raise BodyError(413, f"{len(items)} events in one request; at most {max_events}")
    events: list[AnyEvent] = []
    errors: list[EventError] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append(EventError(index, "", "an event must be a JSON object"))
            continue
        tenant = item.get("tenant")
        if grant.tenant is not None:
            if tenant is None:
                item = {**item, "tenant": grant.tenant}
            elif tenant != grant.tenant:
                errors.append(
                    EventError(
                        index, "tenant", "this token publishes for its own tenant only", True
                    )
                )
                continue
        try:
            events.append(EVENT_ADAPTER.validate_python(item))
        except ValidationError as exc:
            errors += [
                EventError(index, ".".join(str(p) for p in e["loc"]), e["msg"])
                for e in exc.errors(include_url=False, include_input=False)
            ]
    return errors or events


class BrokerUnavailable(LlmflowError):
    """The broker did not ack in time (or the producer is not connected): 503."""


class Busy(LlmflowError):
    """Too much already waits for the broker's acks: 429."""


class RecordTooLarge(LlmflowError):
    """Events that would not fit in a Kafka record: 413, nothing sent."""

    def __init__(self, errors: list[EventError]) -> None:
        super().__init__(f"{len(errors)} event(s) larger than a Kafka record may be")
        self.errors = errors


# Room a record needs besides its value: key, headers, batch framing.
RECORD_OVERHEAD = 1024


@dataclass(frozen=True, slots=True)
class Ack:
    """Where an event was written."""

    id: str
    partition: int
    offset: int


class Send(Protocol):
    """aiokafka's `AIOKafkaProducer.send`: queue a record, get a future of its metadata."""

    def __call__(self, topic: str, value: bytes, key: bytes) -> Awaitable[asyncio.Future[Any]]: ...


class Publisher:
    """Produces validated events and bounds what waits for acks (events and bytes)."""

    def __init__(
        self,
        send: Send | None,
        *,
        max_pending_events: int,
        max_pending_bytes: int,
        timeout_s: float,
        max_record_bytes: int = 1_000_000,
        observe: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self.send = send  # None until the producer is connected
        self.max_record_bytes = max_record_bytes
        self.max_pending_events = max_pending_events
        self.max_pending_bytes = max_pending_bytes
        self.timeout_s = timeout_s
        self.pending_events = 0
        self.pending_bytes = 0
        self._observe = observe
        self.failure: str | None = None
        """Why the last publish found the broker unavailable, until one succeeds or
        `probe` reaches the broker (`/readyz` reports it meanwhile)."""
        self.probe: Callable[[], Awaitable[bool]] | None = None
        """Whether the producer reaches the broker now (a metadata request)."""

    async def publish(self, topic: str, events: list[AnyEvent]) -> list[Ack]:
        """Send every event and wait for each ack; raises Busy before sending anything when
        the bound would be passed, BrokerUnavailable when the acks do not come in time."""
        if self.send is None:
            raise BrokerUnavailable("not connected to the Kafka broker yet")
        values = [event.model_dump_json().encode() for event in events]
        limit = self.max_record_bytes - RECORD_OVERHEAD
        if too_large := [
            EventError(n, "", f"{len(value)} bytes as a record; at most {limit}")
            for n, (event, value) in enumerate(zip(events, values, strict=True))
            if len(value) + len(event.key.encode()) > limit
        ]:
            raise RecordTooLarge(too_large)
        size = sum(len(v) for v in values)
        if (
            self.pending_events + len(values) > self.max_pending_events
            or self.pending_bytes + size > self.max_pending_bytes
        ):
            raise Busy(
                f"{self.pending_events} events ({self.pending_bytes} bytes) wait for the "
                "broker's acks; try again shortly"
            )
        self.pending_events += len(values)
        self.pending_bytes += size
        try:
            acks = await asyncio.wait_for(self._send_all(topic, events, values), self.timeout_s)
        except TimeoutError:
            self.failure = f"the broker did not acknowledge within {self.timeout_s:g} s"
            raise BrokerUnavailable(
                f"{self.failure}; the events may still be written: retry with the same ids "
                "(results carry the id)"
            ) from None
        except BrokerUnavailable as exc:
            self.failure = str(exc)
            raise
        else:
            self.failure = None
            return acks
        finally:
            self.pending_events -= len(values)
            self.pending_bytes -= size

    async def _send_all(self, topic: str, events: list[AnyEvent], values: list[bytes]) -> list[Ack]:
        assert self.send is not None
        started = time.monotonic()
        try:
            futures = [
                await self.send(topic, value, event.key.encode())
                for event, value in zip(events, values, strict=True)
            ]
        except Exception as exc:  # aiokafka's KafkaError and its kin, before any ack
            raise BrokerUnavailable(f"the producer refused the events: {exc}") from exc
        acks = []
        for event, future in zip(events, futures, strict=True):
            try:
                metadata = await future
            except Exception as exc:  # aiokafka's KafkaError and its kin
                raise BrokerUnavailable(f"the broker refused the event {event.id}: {exc}") from exc
            acks.append(Ack(event.id, metadata.partition, metadata.offset))
        self._observe(time.monotonic() - started)
        return acks
