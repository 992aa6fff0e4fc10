"""The console's files and routes: auth, what each tenant sees, replay (permission, the
republished bytes, the audit record), the flow's numbers from fake offsets, cost, and no
secret in any page or answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmflow.services.gateway import flow
from llmflow.services.gateway.app import Gateway, make_app
from llmflow.services.gateway.auth import OPEN, Authenticator, Grant
from llmflow.services.gateway.flow import FlowMeter, Sample, percentile
from llmflow.services.gateway.results import Entry, entry_of
from llmflow.services.gateway.settings import GatewaySettings
from llmflow.services.gateway.spend import spend_changelog, spend_rows
from tests.unit.gateway.helpers import (
    ACME,
    GLOBEX,
    TOKENS,
    FakeProducer,
    auth,
    make_gateway,
    output,
)

ACME_READONLY = "acme-readonly-0123456789"
ALL_TOKENS = TOKENS | {ACME_READONLY: {"tenant": "acme"}}
API = (
    "/v1/console/snapshot",
    "/v1/console/dead-letters",
    "/v1/console/outputs",
    "/v1/console/cost",
)


def out(
    event_id: str,
    *,
    tenant: str = "acme",
    key: str = "C-1001",
    offset: int = 0,
    latency_ms: float = 100.0,
    cost_usd: float = 0.001,
    model: str = "gpt-4o-mini",
) -> Entry:
    return output(
        event_id,
        tenant=tenant,
        key=key,
        offset=offset,
        topology_version="3",
        org_record={"table": "customers", "key": key, "version": "7"},
        retrieval={
            "collection": "policies",
            "mode": "keyword",
            "query": "refund",
            "embedding": {"model": "text-embedding-3-small", "tokens_in": 5, "tokens_out": 0}
            | {"cost_usd": 0.0001},
            "passages": [{"id": "p1", "key": "refunds", "n": 0, "version": "2", "score": 1.5}],
        },
        calls=[
            {
                "name": "classify",
                "kind": "chat",
                "model": model,
                "prompt_version": "v2",
                "tokens_in": 100,
                "tokens_out": 20,
                "latency_ms": latency_ms,
                "cost_usd": cost_usd,
            }
        ],
        totals={
            "model_calls": 1,
            "tokens_in": 100,
            "tokens_out": 20,
            "cost_usd": cost_usd,
            "latency_ms": latency_ms,
        },
        worker="w-1",
        produced_at="2026-11-30T12:00:00+00:00",
    )


def dead(
    event_id: str, *, tenant: str = "acme", offset: int = 0, carried: bool = True
) -> tuple[Entry, bytes]:
    original = json.dumps(
        {"id": event_id, "kind": "text", "key": "C-9", "tenant": tenant, "text": "x"}
    ).encode()
    value = {
        "record_type": "dead_letter",
        "event_id": event_id,
        "topology": "support_triage",
        "topology_version": "3",
        "stage": "model",
        "error_kind": "upstream_unavailable",
        "message": "the model did not answer",
        "source_topic": "support.tickets",
        "source_partition": 1,
        "source_offset": 41,
        "original_b64": base64.b64encode(original).decode() if carried else None,
        "original_sha256": hashlib.sha256(original).hexdigest(),
        "original_size": len(original),
        "failed_at": "2026-11-30T12:00:01+00:00",
    }
    entry = entry_of(
        "support.tickets.dlq", 2, offset, b"C-9", json.dumps(value).encode(), "support_triage"
    )
    assert entry is not None
    return entry, original


@pytest.fixture
async def gateway() -> Gateway:
    return make_gateway(tokens=ALL_TOKENS, console_every_s=0.05)


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(gateway)))
    await client.start_server()
    yield client
    await client.close()


def _sent(gateway: Gateway) -> list[tuple[str, bytes, bytes]]:
    producer = gateway.publisher.send
    assert isinstance(producer, FakeProducer)
    return producer.sent


async def test_the_page_and_its_files_need_no_token_and_hold_no_data(
    client: TestClient[Any, Any],
) -> None:
    for path, kind in (
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ):
        response = await client.get(path)
        assert response.status == 200 and response.content_type == kind
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    page = await (await client.get("/console")).text()
    assert '<script type="module" src="/console/console.js">' in page
    script = await (await client.get("/console/console.js")).text()
    assert "Authorization" in script and "sessionStorage" in script
    assert "EventSource" not in script.replace("EventSource cannot", "")  # fetch() streaming


async def test_every_console_route_needs_a_token(client: TestClient[Any, Any]) -> None:
    for path in (*API, "/v1/console/stream"):
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers=auth("x" * 20))).status == 401
    replay = "/v1/console/dead-letters/support.tickets.dlq/2/0/replay"
    assert (await client.post(replay)).status == 401


async def test_a_tenant_sees_its_own_outputs_and_dead_letters_only(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    gateway.index.add(out("a-1", offset=0))
    gateway.index.add(out("g-1", tenant="globex", key="G-1", offset=1))
    gateway.index.add(dead("a-dead", offset=0)[0])
    gateway.index.add(dead("g-dead", tenant="globex", offset=1)[0])

    body = await (await client.get("/v1/console/outputs", headers=auth(ACME))).json()
    assert [o["event_id"] for o in body["outputs"]] == ["a-1"]
    body = await (await client.get("/v1/console/dead-letters", headers=auth(GLOBEX))).json()
    assert [d["event_id"] for d in body["dead_letters"]] == ["g-dead"]
    snapshot = await (await client.get("/v1/console/snapshot", headers=auth(GLOBEX))).json()
    assert [o["event_id"] for o in snapshot["outputs"]] == ["g-1"]
    assert [d["event_id"] for d in snapshot["dead_letters"]] == ["g-dead"]
    assert snapshot["grant"] == {"tenant": "globex", "replay": False}
    cost = await (await client.get("/v1/console/cost", headers=auth(GLOBEX))).json()
    assert [t["tenant"] for t in cost["by_tenant"]] == ["globex"] and cost["outputs"] == 1


async def test_outputs_are_searched_by_event_id_or_key_and_carry_their_lineage(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    gateway.index.add(out("ticket-1", key="C-1", offset=0))
    gateway.index.add(out("ticket-2", key="C-2", offset=1))
    gateway.index.add(out("other", key="C-2", offset=2))

    async def search(query: str) -> list[dict[str, Any]]:
        response = await client.get("/v1/console/outputs", params={"q": query}, headers=auth(ACME))
        rows: list[dict[str, Any]] = (await response.json())["outputs"]
        return rows

    assert [o["event_id"] for o in await search("ticket-1")] == ["ticket-1"]
    assert [o["event_id"] for o in await search("C-2")] == ["other", "ticket-2"]  # newest first
    assert [o["event_id"] for o in await search("")] == ["other", "ticket-2", "ticket-1"]
    row = (await search("ticket-1"))[0]
    assert row["topology_version"] == "3" and row["org_record"]["version"] == "7"
    assert row["retrieval"]["passages"][0] == {
        "id": "p1",
        "key": "refunds",
        "n": 0,
        "version": "2",
        "score": 1.5,
    }
    call = row["calls"][0]
    assert (call["model"], call["prompt_version"], call["tokens_in"]) == ("gpt-4o-mini", "v2", 100)
    assert row["totals"]["cost_usd"] == 0.001 and row["totals"]["latency_ms"] == 100.0


async def test_replay_republishes_the_original_and_writes_an_audit_record(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    entry, original = dead("a-dead", offset=5)
    gateway.index.add(entry)
    listed = await (await client.get("/v1/console/dead-letters", headers=auth(ACME))).json()
    assert listed["dead_letters"][0]["replayable"] is True
    assert listed["dead_letters"][0]["stage"] == "model"

    response = await client.post(
        "/v1/console/dead-letters/support.tickets.dlq/2/5/replay", headers=auth(ACME)
    )
    assert response.status == 202, await response.text()
    body = await response.json()
    (topic, value, key), (audit_topic, audit, audit_key) = _sent(gateway)
    assert (topic, value, key) == ("support.tickets", original, b"C-9")
    assert audit_topic == "llmflow.audit" == body["audit_topic"] and audit_key == b"acme"
    record = json.loads(audit)
    assert record == body["replayed"]
    assert record["action"] == "replay_dead_letter" and record["tenant"] == "acme"
    assert record["at"]
    assert record["dead_letter"] == {
        "topic": "support.tickets.dlq",
        "partition": 2,
        "offset": 5,
        "event_id": "a-dead",
        "stage": "model",
        "error_kind": "upstream_unavailable",
    }
    assert record["republished"]["topic"] == "support.tickets"
    assert {"partition", "offset"} <= set(record["republished"])


async def test_a_second_replay_is_409_unless_asked_again_and_one_under_way_is_409(
    gateway: Gateway,
) -> None:
    producer = FakeProducer(hold=True)  # the first replay waits for its ack
    gateway.publisher.send = producer
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(gateway)))
    await client.start_server()
    try:
        gateway.index.add(dead("a-dead", offset=5)[0])
        url = "/v1/console/dead-letters/support.tickets.dlq/2/5/replay"
        first = asyncio.create_task(client.post(url, headers=auth(ACME)))
        for _ in range(500):
            if producer.sent:
                break
            await asyncio.sleep(0.01)
        during = await client.post(url, headers=auth(ACME))
        assert during.status == 409 and (await during.json())["error"] == "replay_under_way"
        producer.release()
        assert (await first).status == 202
        again = await client.post(url, headers=auth(ACME))
        body = await again.json()
        assert again.status == 409 and body["error"] == "already_replayed"
        assert body["replayed"]["republished"]["topic"] == "support.tickets"
        assert "again=true" in body["message"]
        sent = len(producer.sent)
        assert (await client.post(url + "?again=true", headers=auth(ACME))).status == 202
        assert len(producer.sent) == sent + 2  # the event and its audit record
    finally:
        await client.close()


async def test_replay_needs_a_replay_token_and_the_tenants_own_dead_letter(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    gateway.index.add(dead("a-dead", offset=0)[0])
    gateway.index.add(dead("g-dead", tenant="globex", offset=1)[0])
    gateway.index.add(dead("a-big", offset=2, carried=False)[0])
    url = "/v1/console/dead-letters/support.tickets.dlq/2/{}/replay"

    response = await client.post(url.format(0), headers=auth(ACME_READONLY))
    assert response.status == 403 and (await response.json())["error"] == "forbidden"
    listed = await (
        await client.get("/v1/console/dead-letters", headers=auth(ACME_READONLY))
    ).json()
    assert {d["replayable"] for d in listed["dead_letters"]} == {False}  # no button
    assert (await client.post(url.format(1), headers=auth(ACME))).status == 404  # globex's
    assert (await client.post(url.format(9), headers=auth(ACME))).status == 404  # none there
    for place in ("x", "%20%2B0", "%D9%A0", "0" * 20):  # " +0", Arabic-Indic zero, > int64
        assert (await client.post(url.format(place), headers=auth(ACME))).status == 400, place
    # One too large to carry its event belongs to nobody (a tenant's token does not see it).
    assert (await client.post(url.format(2), headers=auth(ACME))).status == 404
    assert _sent(gateway) == []


async def test_a_dead_letter_without_its_event_is_409_naming_where_it_is() -> None:
    gateway = make_gateway()
    gateway.authenticator = Authenticator([], open_access=True)
    gateway.index.add(dead("a-big", offset=2, carried=False)[0])
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(gateway)))
    await client.start_server()
    try:
        response = await client.post("/v1/console/dead-letters/support.tickets.dlq/2/2/replay")
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 409 and "support.tickets at offset 41" in body["message"]
    assert _sent(gateway) == []


async def test_replay_without_a_producer_is_503(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    gateway.index.add(dead("a-dead", offset=0)[0])
    gateway.publisher.send = None
    response = await client.post(
        "/v1/console/dead-letters/support.tickets.dlq/2/0/replay", headers=auth(ACME)
    )
    assert response.status == 503


def test_flow_numbers_come_from_the_offsets() -> None:
    gateway = make_gateway()
    meter = FlowMeter(gateway.topologies, window_s=60)
    ins, outs, dls = "support.tickets", "support.triaged", "support.tickets.dlq"
    meter.record(Sample(0.0, {(ins, 0): 100, (ins, 1): 50, (outs, 0): 90, (dls, 0): 5}, {}))
    meter.record(
        Sample(
            10.0,
            {(ins, 0): 130, (ins, 1): 70, (outs, 0): 130, (dls, 0): 7},
            {(ins, 0): 125, (ins, 1): 70},
        )
    )
    for n, latency in enumerate([10.0, 20.0, 30.0, 40.0, 1000.0]):
        gateway.index.add(out(f"e-{n}", offset=n, latency_ms=latency))
    gateway.index.add(out("g", tenant="globex", offset=9, latency_ms=5000.0))

    (row,) = meter.snapshot(gateway.index.newest(), Grant("acme", False))
    assert row["topology"] == "support_triage" and row["input_topic"] == ins
    assert row["rates"] == {"events_in": 5.0, "outputs": 4.0, "dead_letters": 0.2, "parked": 0.0}
    assert row["window"] == {
        "seconds": 10.0,
        "events_in": 50,
        "outputs": 40,
        "dead_letters": 2,
        "parked": 0,
    }
    assert row["partitions"] == [
        {"partition": 0, "end": 130, "committed": 125, "lag": 5},
        {"partition": 1, "end": 70, "committed": 70, "lag": 0},
    ]
    assert row["in_flight"] == 5
    assert row["history"] == [row["rates"]]
    assert row["latency_ms"] == {"p50": 30.0, "p95": 1000.0, "outputs": 5}  # not globex's

    meter.record(Sample(100.0, {(ins, 0): 130, (ins, 1): 70}, {}))  # older samples drop out
    assert [s.at for s in meter.samples] == [100.0]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 0.95) == 95.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.0


async def test_the_flow_meter_samples_until_cancelled() -> None:
    gateway = make_gateway()
    meter = FlowMeter(gateway.topologies, window_s=60)
    asked: list[tuple[list[str], str]] = []
    enough = asyncio.Event()

    class Offsets:
        async def sample(
            self, topics: list[str], group: str
        ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
            asked.append((topics, group))
            if len(asked) == 4:
                enough.set()
            if len(asked) == 2:
                raise ConnectionError("broker gone")  # a gap, not the end
            return {("support.tickets", 0): len(asked)}, {}

    task = asyncio.create_task(meter.run(Offsets(), "llmflow", 0.01))
    await asyncio.wait_for(enough.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asked[0][1] == "llmflow" and "support.tickets" in asked[0][0]
    assert "support.triaged" in asked[0][0] and "support.tickets.dlq" in asked[0][0]
    assert len(meter.samples) >= 3


async def test_cost_per_model_and_per_tenant(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    gateway.index.add(out("a", offset=0, cost_usd=0.002))
    gateway.index.add(out("b", offset=1, cost_usd=0.003, model="gpt-4o"))
    gateway.index.add(out("c", tenant="globex", offset=2, cost_usd=0.5))
    body = await (await client.get("/v1/console/cost", headers=auth(ACME))).json()
    assert body["outputs"] == 2 and "lookback" in body["since"]
    assert body["by_model"] == [
        {"model": "gpt-4o", "calls": 1, "tokens_in": 100, "tokens_out": 20, "cost_usd": 0.003},
        {"model": "gpt-4o-mini", "calls": 1, "tokens_in": 100, "tokens_out": 20, "cost_usd": 0.002},
        {
            "model": "text-embedding-3-small",
            "calls": 2,
            "tokens_in": 10,
            "tokens_out": 0,
            "cost_usd": 0.0002,
        },
    ]
    assert body["by_tenant"] == [{"tenant": "acme", "outputs": 2, "cost_usd": 0.005}]


async def test_the_stream_pushes_snapshots(client: TestClient[Any, Any], gateway: Gateway) -> None:
    gateway.index.add(out("a-1"))
    response = await client.get("/v1/console/stream", headers=auth(ACME))
    assert response.status == 200 and response.content_type == "text/event-stream"
    events: list[dict[str, Any]] = []
    while len(events) < 2:
        line = (await response.content.readline()).decode()
        if line.startswith("data: "):
            events.append(json.loads(line[6:]))
    response.close()
    assert events[0]["outputs"][0]["event_id"] == "a-1"
    assert events[0]["flow"][0]["topology"] == "support_triage"


async def test_no_page_or_answer_holds_a_token(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    gateway.index.add(out("a-1", offset=0))
    gateway.index.add(dead("a-dead", offset=0)[0])
    gateway.flow.record(Sample(0.0, {("support.tickets", 0): 3}, {("support.tickets", 0): 1}))
    texts = [
        await (await client.get(path)).text()
        for path in ("/console", "/console/console.js", "/console/console.css")
    ]
    for token in ALL_TOKENS:
        for path in API:
            texts.append(await (await client.get(path, headers=auth(token))).text())
        response = await client.get("/v1/console/stream", headers=auth(token))
        texts.append((await response.content.readuntil(b"\n\n")).decode())
        response.close()
    replayed = await client.post(
        "/v1/console/dead-letters/support.tickets.dlq/2/0/replay", headers=auth(ACME)
    )
    texts.append(await replayed.text())
    texts += [value.decode() for _, value, _ in _sent(gateway)]
    assert len(texts) == 3 + 5 * len(ALL_TOKENS) + 1 + 2
    for text in texts:
        for token in ALL_TOKENS:
            assert token not in text


async def test_cost_has_each_tenants_spend_against_its_budget_this_period() -> None:
    gateway = make_gateway(
        tokens=ALL_TOKENS, budgets={"acme": {"usd": 2, "period": "month"}, "initech": {"usd": 1}}
    )
    today, month = datetime.now(UTC).strftime("%Y-%m-%d"), datetime.now(UTC).strftime("%Y-%m")
    gateway.spend.set_partial(f"acme|{month}|0", 0.5)
    gateway.spend.set_partial(f"acme|{month}|1", 0.25)
    gateway.spend.set_partial("acme|2020-01|0", 9.0)  # another period
    gateway.spend.set_partial(f"globex|{today}|3", 0.125)  # no budget: by the day
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(gateway)))
    await client.start_server()
    try:
        acme = await (await client.get("/v1/console/cost", headers=auth(ACME))).json()
        globex = await (await client.get("/v1/console/cost", headers=auth(GLOBEX))).json()
    finally:
        await client.close()
    assert acme["spend"] == [
        {
            "tenant": "acme",
            "period": "month",
            "period_key": month,
            "spent_usd": 0.75,
            "budget_usd": 2.0,
            "used": 0.375,
        }
    ]
    assert globex["spend"] == [
        {
            "tenant": "globex",
            "period": "day",
            "period_key": today,
            "spent_usd": 0.125,
            "budget_usd": None,
            "used": None,
        }
    ]
    every = spend_rows(gateway.spend, gateway.settings.budgets, OPEN, datetime.now(UTC))
    assert [r["tenant"] for r in every] == ["acme", "globex", "initech"]
    assert every[2]["spent_usd"] == 0.0 and every[2]["used"] == 0.0


def test_the_budgets_and_group_are_the_workers_variables_and_the_changelog_the_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMFLOW_BUDGETS", '{"acme": {"usd": 5, "period": "day"}}')
    monkeypatch.setenv("LLMFLOW_APP_ID", "llmflow-prod")
    settings = GatewaySettings()
    assert settings.budgets["acme"].usd == 5 and settings.worker_group == "llmflow-prod"
    monkeypatch.setenv("LLMFLOW_GATEWAY_WORKER_GROUP", "llmflow-blue")
    assert GatewaySettings().worker_group == "llmflow-blue"
    gateway = make_gateway()
    assert spend_changelog("llmflow-7", gateway.topologies[0]) == (
        "llmflow-7-support_triage-spend-changelog"
    )
    meter = gateway.flow
    assert meter.partitions("support.tickets") == 0
    meter.record(Sample(0.0, {("support.tickets", p): 0 for p in range(4)}, {}))
    assert meter.partitions("support.tickets") == 4


async def test_the_openapi_document_names_every_console_route(
    client: TestClient[Any, Any], gateway: Gateway
) -> None:
    document = await (await client.get("/openapi.json")).json()
    routes = {
        route.resource.canonical
        for route in make_app(gateway).router.routes()
        if route.resource is not None and "console" in route.resource.canonical
    }
    assert routes - {"/console/console.js", "/console/console.css"} <= set(document["paths"])
    replay = document["paths"]["/v1/console/dead-letters/{topic}/{partition}/{offset}/replay"]
    assert {"202", "401", "403", "404", "409"} <= set(replay["post"]["responses"])


def test_latencies_are_the_newest_outputs_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flow, "LATENCY_OUTPUTS", 3)
    gateway = make_gateway()
    for n in range(1, 6):
        gateway.index.add(out(f"e-{n}", offset=n, latency_ms=float(n)))
    for _ in range(2):  # the second time from what the first parsed
        (row,) = gateway.flow.snapshot(gateway.index.newest(), Grant("acme", False))
        assert row["latency_ms"] == {"p50": 4.0, "p95": 5.0, "outputs": 3}
    assert "rates" not in row  # no offsets sampled yet: no numbers made up
