"""A body is checked as a whole before anything is sent; hostile bodies are refused."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmflow.services.gateway.auth import OPEN, Grant
from llmflow.services.gateway.publish import (
    BodyError,
    BrokerUnavailable,
    Busy,
    EventError,
    Publisher,
    parse_body,
)
from tests.unit.gateway.helpers import FakeProducer, event

ACME = Grant("acme", replay=False)


def _body(value: object) -> bytes:
    return json.dumps(value).encode()


def test_one_event_and_a_batch_are_published_as_the_tokens_tenant() -> None:
    [one] = parse_body(_body(event()), ACME, 10)
    assert not isinstance(one, EventError) and one.tenant == "acme"
    batch = parse_body(_body([event(1), event(2, tenant="acme")]), ACME, 10)
    assert [e.tenant for e in batch if not isinstance(e, EventError)] == ["acme", "acme"]


def test_an_open_gateway_keeps_the_events_tenant() -> None:
    [one] = parse_body(_body(event(tenant="anyone")), OPEN, 10)
    assert not isinstance(one, EventError) and one.tenant == "anyone"


def test_another_tenant_is_forbidden() -> None:
    [error] = parse_body(_body([event(0), event(1, tenant="globex")]), ACME, 10)
    assert isinstance(error, EventError) and error.forbidden
    assert error.as_json() == {
        "index": 1,
        "field": "tenant",
        "message": "this token publishes for its own tenant only",
    }


def test_every_invalid_event_is_reported_with_index_and_field() -> None:
    errors = parse_body(_body([event(0), event(1, text=""), {"kind": "text"}, 7]), ACME, 10)
    assert all(isinstance(e, EventError) for e in errors)
    found = {(e.index, e.field) for e in errors if isinstance(e, EventError)}
    assert (1, "text.text") in found and (3, "") in found
    assert {e.index for e in errors if isinstance(e, EventError)} == {1, 2, 3}


def _parse(body: bytes) -> tuple[int, list[Any]]:
    """(0, what parse_body gave) or (the status of its BodyError, [])."""
    try:
        return 0, list(parse_body(body, ACME, 10))
    except BodyError as exc:
        return exc.status, []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b'"a string"',
        b"42",
        b"null",
        b"[]",
        b"\xff\xfe",
        # A lone surrogate is no Unicode character: the worker's parser refuses it too.
        b'{"id": "x", "kind": "text", "text": "\\ud800"}',
    ],
)
def test_a_body_that_is_no_event_is_refused(body: bytes) -> None:
    status, parsed = _parse(body)
    if status == 0:
        assert parsed and all(isinstance(e, EventError) for e in parsed)
    assert status in (0, 400)


def test_a_surrogate_in_an_otherwise_valid_event_is_an_error() -> None:
    body = _body(event()).replace(b"I was charged twice", b"\\udc00 twice")
    with pytest.raises(BodyError, match="not JSON"):
        parse_body(body, ACME, 10)


def test_wrong_types_are_errors_not_coerced() -> None:
    errors = parse_body(_body(event(key=42, timestamp=1700000000, attributes={"a": 1})), ACME, 10)
    fields = {e.field for e in errors if isinstance(e, EventError)}
    assert {"text.key", "text.timestamp", "text.attributes.a"} <= fields


def test_a_batch_of_100000_tiny_events_is_too_large() -> None:
    body = b"[" + b",".join([b"{}"] * 100_000) + b"]"
    with pytest.raises(BodyError) as raised:
        parse_body(body, ACME, 1000)
    assert raised.value.status == 413


async def test_publish_waits_for_every_ack_and_keys_by_the_event_key() -> None:
    producer = FakeProducer()
    publisher = Publisher(producer, max_pending_events=10, max_pending_bytes=10**6, timeout_s=1)
    events = parse_body(_body([event(1, key="K-1"), event(2, key="K-2")]), ACME, 10)
    acks = await publisher.publish(
        "support.tickets", [e for e in events if not isinstance(e, EventError)]
    )
    assert [a.id for a in acks] == ["ev-1", "ev-2"]
    assert [key for _, _, key in producer.sent] == [b"K-1", b"K-2"]
    assert publisher.pending_events == 0 and publisher.pending_bytes == 0


async def test_too_much_waiting_for_acks_is_busy_and_nothing_is_sent() -> None:
    producer = FakeProducer(hold=True)
    publisher = Publisher(producer, max_pending_events=3, max_pending_bytes=10**6, timeout_s=5)
    events = [
        e
        for e in parse_body(_body([event(n) for n in range(2)]), ACME, 10)
        if not isinstance(e, EventError)
    ]
    first = asyncio.create_task(publisher.publish("t", events))
    await asyncio.sleep(0.01)
    assert publisher.pending_events == 2
    with pytest.raises(Busy):
        await publisher.publish("t", events)
    assert len(producer.sent) == 2
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert publisher.pending_events == 0


async def test_a_broker_that_does_not_ack_is_unavailable_after_the_timeout() -> None:
    publisher = Publisher(
        FakeProducer(hold=True), max_pending_events=10, max_pending_bytes=10**6, timeout_s=0.05
    )
    events = [e for e in parse_body(_body(event()), ACME, 10) if not isinstance(e, EventError)]
    with pytest.raises(BrokerUnavailable, match=r"did not acknowledge within 0\.05 s"):
        await publisher.publish("t", events)
    assert publisher.pending_events == 0
    not_connected = Publisher(None, max_pending_events=10, max_pending_bytes=10**6, timeout_s=1)
    with pytest.raises(BrokerUnavailable, match="not connected"):
        await not_connected.publish("t", events)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.sampled_from([*event(), "x"]), children, max_size=8)
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_any_body_is_events_or_a_reason_never_a_crash(body: bytes) -> None:
    status, parsed = _parse(body)
    if status == 0:
        assert parsed
        assert all(isinstance(e, EventError) for e in parsed) or not any(
            isinstance(e, EventError) for e in parsed
        )
    assert status in (0, 400, 413)


def test_the_openapi_event_schema_takes_what_the_contract_takes() -> None:
    from jsonschema import Draft202012Validator

    from llmflow.services.gateway.openapi import document

    components = document("test")["components"]
    for schema in components["schemas"].values():
        Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(
        {"$ref": "#/components/schemas/EventBatch", "components": components}
    )
    assert validator.is_valid(event()) and validator.is_valid([event(1), event(2)])
    assert not validator.is_valid(event(text="")) and not validator.is_valid([])
