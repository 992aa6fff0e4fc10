"""The routes over HTTP, with a fake producer and results added to the index by hand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from llmflow.services.gateway.app import Gateway, make_app
from tests.unit.gateway.helpers import ACME, GLOBEX, FakeProducer, auth, event, make_gateway, output

TICKETS = "/v1/topics/support.tickets/events"


async def _client(gateway: Gateway) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(gateway)))
    await client.start_server()
    return client


@pytest.fixture
async def gateway() -> Gateway:
    return make_gateway(heartbeat_s=0.2)


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[TestClient[Any, Any]]:
    client = await _client(gateway)
    yield client
    await client.close()


async def _sent(gateway: Gateway) -> list[tuple[str, bytes, bytes]]:
    producer = gateway.publisher.send
    assert isinstance(producer, FakeProducer)
    return producer.sent


async def test_no_or_unknown_token_is_401_and_public_routes_are_open(
    client: TestClient[Any, Any],
) -> None:
    for headers in ({}, auth("nope-nope-nope-nope")):
        response = await client.post(TICKETS, json=event(), headers=headers)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"] == "unauthorized"
    assert (await client.get("/v1/results/x", headers={})).status == 401
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert (await client.get(path)).status == 200


async def test_publish_answers_202_with_each_events_place(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    response = await client.post(TICKETS, json=[event(1), event(2)], headers=auth(ACME))
    assert response.status == 202
    body = await response.json()
    assert [e["id"] for e in body["events"]] == ["ev-1", "ev-2"]
    assert all({"partition", "offset"} <= set(e) for e in body["events"])
    topic, value, key = (await _sent(gateway))[0]
    assert topic == "support.tickets" and key == b"C-1001"
    assert json.loads(value)["tenant"] == "acme"


async def test_one_bad_event_publishes_nothing(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    response = await client.post(TICKETS, json=[event(1), event(2, text="")], headers=auth(ACME))
    assert response.status == 400
    body = await response.json()
    assert body["errors"][0]["index"] == 1 and body["errors"][0]["field"] == "text.text"
    assert await _sent(gateway) == []


async def test_a_kind_the_topology_does_not_accept_is_400(client: TestClient[Any, Any]) -> None:
    image = event(kind="image", image={"url": "https://example.com/a.jpg"})
    image.pop("text")
    response = await client.post(TICKETS, json=image, headers=auth(ACME))
    assert response.status == 400 and (await response.json())["errors"][0]["field"] == "kind"


async def test_another_tenants_event_is_403(client: TestClient[Any, Any], gateway: Gateway) -> None:
    response = await client.post(TICKETS, json=event(tenant="acme"), headers=auth(GLOBEX))
    assert response.status == 403 and await _sent(gateway) == []


async def test_a_topic_that_is_no_input_is_404(client: TestClient[Any, Any]) -> None:
    for topic in ("support.triaged", "nope"):
        response = await client.post(f"/v1/topics/{topic}/events", json=event(), headers=auth(ACME))
        assert response.status == 404


async def test_wrong_content_type_is_415(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        TICKETS, data=json.dumps(event()), headers=auth(ACME) | {"Content-Type": "text/plain"}
    )
    assert response.status == 415


async def test_malformed_json_is_400(client: TestClient[Any, Any]) -> None:
    for body in (b"{nope", b"12", b'"x"', b"[]"):
        response = await client.post(
            TICKETS, data=body, headers=auth(ACME) | {"Content-Type": "application/json"}
        )
        assert response.status == 400, body


async def test_a_10_mb_body_is_413_by_length_and_by_bytes_read(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    big = b"[" + b" " * (10 * 1024 * 1024) + b"]"
    headers = auth(ACME) | {"Content-Type": "application/json"}
    response = await client.post(TICKETS, data=big, headers=headers)
    assert response.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        for _ in range(10):
            yield b" " * (1024 * 1024)

    response = await client.post(TICKETS, data=chunks(), headers=headers)
    assert response.status == 413
    assert await _sent(gateway) == []


async def test_a_batch_of_100000_tiny_events_is_413(client: TestClient[Any, Any]) -> None:
    body = b"[" + b",".join([b"{}"] * 100_000) + b"]"
    response = await client.post(
        TICKETS, data=body, headers=auth(ACME) | {"Content-Type": "application/json"}
    )
    assert response.status == 413


async def test_too_much_waiting_for_acks_is_429_with_retry_after() -> None:
    gateway = make_gateway(FakeProducer(hold=True), max_pending_events=2, publish_timeout_s=5)
    client = await _client(gateway)
    try:
        first = asyncio.create_task(
            client.post(TICKETS, json=[event(1), event(2)], headers=auth(ACME))
        )
        await asyncio.sleep(0.1)
        response = await client.post(TICKETS, json=event(3), headers=auth(ACME))
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        first.cancel()
    finally:
        await client.close()


async def test_a_broker_that_does_not_ack_is_503_after_the_timeout() -> None:
    gateway = make_gateway(FakeProducer(hold=True), publish_timeout_s=0.2)
    client = await _client(gateway)
    try:
        response = await client.post(TICKETS, json=event(), headers=auth(ACME))
        assert response.status == 503
        assert (await response.json())["error"] == "broker_unavailable"
        gateway.publisher.send = None
        response = await client.post(TICKETS, json=event(), headers=auth(ACME))
        assert response.status == 503
    finally:
        await client.close()


async def test_readyz_reports_a_failed_publish_until_the_broker_answers_again() -> None:
    producer = FakeProducer(hold=True)
    gateway = make_gateway(producer, publish_timeout_s=0.2)
    client = await _client(gateway)
    answers = [False, True]

    async def probe() -> bool:
        return answers.pop(0)

    reason = "the last publish failed and the broker has not answered since"
    try:
        assert reason not in await (await client.get("/readyz")).text()
        assert (await client.post(TICKETS, json=event(), headers=auth(ACME))).status == 503
        assert reason in await (await client.get("/readyz")).text()  # no probe yet
        gateway.publisher.probe = probe
        assert reason in await (await client.get("/readyz")).text()  # the broker is silent
        assert reason not in await (await client.get("/readyz")).text()  # it answers
        # A publish that succeeds ends a failure as well.
        assert (await client.post(TICKETS, json=event(), headers=auth(ACME))).status == 503
        producer.hold = False
        assert (await client.post(TICKETS, json=event(), headers=auth(ACME))).status == 202
        assert reason not in await (await client.get("/readyz")).text()
    finally:
        await client.close()


async def test_long_poll_gets_a_result_that_arrives_while_it_waits(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    asyncio.get_running_loop().call_later(0.1, gateway.index.add, output("e1"))
    response = await client.get("/v1/results/e1?wait=5", headers=auth(ACME))
    assert response.status == 200 and (await response.json())["event_id"] == "e1"
    response = await client.get("/v1/results/e1", headers=auth(ACME))
    assert response.status == 200


async def test_long_poll_of_another_tenants_result_is_404(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    gateway.index.add(output("e1", tenant="acme"))
    response = await client.get("/v1/results/e1?wait=0.1", headers=auth(GLOBEX))
    assert response.status == 404 and (await response.json())["error"] == "no_result"


async def test_long_poll_wait_is_checked_and_capped(client: TestClient[Any, Any]) -> None:
    for wait in ("-1", "nan", "inf", "soon"):
        response = await client.get(f"/v1/results/e1?wait={wait}", headers=auth(ACME))
        assert response.status == 400
    gateway = make_gateway(max_wait_s=0.1)
    capped = await _client(gateway)
    try:
        started = asyncio.get_running_loop().time()
        response = await capped.get("/v1/results/e1?wait=30", headers=auth(ACME))
        assert response.status == 404
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await capped.close()


async def _events(response: ClientResponse, count: int) -> list[dict[str, str]]:
    """The next `count` server-sent events (comments skipped)."""
    found: list[dict[str, str]] = []
    current: dict[str, str] = {}
    while len(found) < count:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode().rstrip("\n")
        if not line:
            if current:
                found.append(current)
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = value
    return found


async def test_stream_gives_this_tenants_results_for_a_key_and_resumes_by_id(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    index = gateway.index
    for tp in (("support.triaged", 0), ("support.triaged", 1)):
        index.start(tp, 0)
    index.add(output("old", key="K", offset=0))  # before the stream: not given
    response = await client.get("/v1/topics/support.tickets/results?key=K", headers=auth(ACME))
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    await asyncio.sleep(0.05)
    index.add(output("e1", key="K", offset=1))
    index.add(output("x", key="other", offset=2))
    index.add(output("g", key="K", offset=3, tenant="globex"))
    index.add(output("e2", key="K", offset=0, partition=1))
    index.add(output("e3", key="K", offset=4))
    first, second, third = await _events(response, 3)
    assert [json.loads(e["data"])["event_id"] for e in (first, second, third)] == ["e1", "e2", "e3"]
    assert first["event"] == "output" and first["id"] == "o0:2,o1:0"
    response.close()
    # Resume after the first: the index still holds the rest.
    resumed = await client.get(
        "/v1/topics/support.triaged/results?key=K",
        headers=auth(ACME) | {"Last-Event-ID": first["id"]},
    )
    again = await _events(resumed, 2)
    assert [json.loads(e["data"])["event_id"] for e in again] == ["e2", "e3"]
    resumed.close()


async def test_stream_sends_heartbeats(client: TestClient[Any, Any]) -> None:
    response = await client.get("/v1/topics/support.tickets/results", headers=auth(ACME))
    lines = [await asyncio.wait_for(response.content.readline(), 5) for _ in range(4)]
    assert b": heartbeat\n" in lines
    response.close()


async def test_a_client_that_falls_behind_gets_an_error_and_is_closed() -> None:
    gateway = make_gateway(stream_queue=2, heartbeat_s=5)
    client = await _client(gateway)
    try:
        response = await client.get("/v1/topics/support.tickets/results", headers=auth(ACME))
        await asyncio.sleep(0.05)
        for n in range(5):  # added at once: the stream has no turn to take them
            gateway.index.add(output(f"e{n}", offset=n))
        body = await asyncio.wait_for(response.content.read(), 5)
        assert b"event: error\n" in body and b'"behind"' in body
        assert gateway.index.subscribers == 0
    finally:
        await client.close()


async def test_streams_are_bounded_in_all_and_per_tenant() -> None:
    gateway = make_gateway(max_streams=3, max_streams_per_tenant=2, heartbeat_s=5)
    client = await _client(gateway)
    results = "/v1/topics/support.tickets/results"
    try:
        first = await client.get(results, headers=auth(ACME))
        second = await client.get("/v1/console/stream", headers=auth(ACME))  # counts as well
        assert first.status == second.status == 200 and gateway.slots.open == 2
        refused = await client.get(results, headers=auth(ACME))
        assert refused.status == 429 and refused.headers["Retry-After"] == "1"
        assert (await refused.json())["error"] == "too_many_streams"
        third = await client.get(results, headers=auth(GLOBEX))  # another tenant's slot
        assert third.status == 200
        refused = await client.get(results, headers=auth(GLOBEX))
        assert refused.status == 429 and "3 streams are open" in (await refused.json())["message"]
        first.close()  # a client that leaves gives its slot back
        await _until_open(gateway, 2)
        again = await client.get(results, headers=auth(ACME))
        assert again.status == 200
        metrics = await (await client.get("/metrics")).text()
        assert "llmflow_gateway_stream_clients 3.0" in metrics
        for response in (second, third, again):
            response.close()
        await _until_open(gateway, 0)
    finally:
        await client.close()


async def _until_open(gateway: Gateway, count: int) -> None:
    for _ in range(250):
        if gateway.slots.open == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{gateway.slots.open} streams open, not {count}")


async def test_stream_arguments_are_checked(client: TestClient[Any, Any]) -> None:
    cases = {
        "/v1/topics/nope/results": 404,
        "/v1/topics/support.tickets/results?last_event_id=zz": 400,
        "/v1/topics/support.tickets/results?from=yesterday": 400,
        "/v1/topics/support.tickets/results?tenant=acme": None,
    }
    for path, status in cases.items():
        response = await client.get(path, headers=auth(GLOBEX))
        assert response.status == (status or 403), path
    response = await client.get(
        "/v1/topics/support.tickets/results?from=earliest", headers=auth(GLOBEX)
    )
    assert response.status == 403  # globex has no replay grant


async def test_an_id_past_a_partitions_end_is_400_and_the_broker_is_asked_only_then(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    asked: list[list[str]] = []
    broker_away = False

    async def end_offsets(topics: list[str]) -> dict[tuple[str, int], int]:
        asked.append(topics)
        if broker_away:
            raise ConnectionError("no broker")
        return {("support.triaged", 0): 10, ("support.triaged", 1): 3}

    gateway.end_offsets = end_offsets
    gateway.index.start(("support.triaged", 0), 4)
    path = "/v1/topics/support.tickets/results?last_event_id="

    async def status(last: str) -> int:
        response = await client.get(path + last, headers=auth(ACME))
        response.close()
        return response.status

    assert await status("o0:4") == 200 and asked == []  # within what the index read
    assert await status("o0:10,o1:3") == 200 and asked == [["support.triaged"]]
    response = await client.get(path + "o0:4,o1:4", headers=auth(ACME))
    body = await response.json()
    assert response.status == 400 and body["error"] == "id_past_the_end"
    assert "offset 4 of support.triaged[1], whose end is 3" in body["message"]
    assert await status("d0:1") == 400  # a partition the broker does not have: end 0
    broker_away = True
    assert await status("o0:4,o1:4") == 200  # not checked: the id may well be good


async def test_openapi_document_has_the_routes_and_the_contracts(
    client: TestClient[Any, Any],
) -> None:
    document = await (await client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    assert {
        "/v1/topics/{topic}/events",
        "/v1/results/{event_id}",
        "/v1/topics/{topic}/results",
    } <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert {"Event", "Result", "TextEvent", "Output", "DeadLetter", "Error"} <= set(schemas)
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


async def test_metrics_count_requests_by_route_and_status(client: TestClient[Any, Any]) -> None:
    await client.post(TICKETS, json=event(), headers=auth(ACME))
    await client.get("/v1/results/x", headers=auth(ACME))
    text = await (await client.get("/metrics")).text()
    assert (
        'llmflow_gateway_requests_total{route="/v1/topics/{topic}/events",status="202"} 1.0' in text
    )
    assert 'llmflow_gateway_requests_total{route="/v1/results/{event_id}",status="404"} 1.0' in text
    for name in (
        "llmflow_gateway_events_accepted_total",
        "llmflow_gateway_publish_seconds_bucket",
        "llmflow_gateway_index_results",
        "llmflow_gateway_stream_clients",
    ):
        assert name in text


async def test_readyz_says_why_it_is_not_ready(client: TestClient[Any, Any]) -> None:
    response = await client.get("/readyz")
    assert response.status == 503 and "result topics do not exist yet" in await response.text()


async def test_an_event_larger_than_a_record_is_413_and_nothing_is_sent() -> None:
    gateway = make_gateway(max_record_bytes=64 * 1024, max_body_bytes=4 * 1024 * 1024)
    client = await _client(gateway)
    try:
        big = event(1, attributes={"blob": "x" * 70_000})
        response = await client.post(TICKETS, json=[event(0), big], headers=auth(ACME))
        assert response.status == 413
        assert [e["index"] for e in (await response.json())["errors"]] == [1]
        assert await _sent(gateway) == []
    finally:
        await client.close()


async def test_a_producer_that_refuses_to_send_is_503() -> None:
    async def refuse(topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        raise RuntimeError("no metadata for the topic")

    gateway = make_gateway()
    gateway.publisher.send = refuse
    client = await _client(gateway)
    try:
        response = await client.post(TICKETS, json=event(), headers=auth(ACME))
        assert response.status == 503 and "no metadata" in (await response.json())["message"]
        assert gateway.publisher.pending_events == 0
    finally:
        await client.close()
