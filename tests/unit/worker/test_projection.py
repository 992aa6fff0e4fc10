"""Routes that send a projection: the fields they name, with the output's identity and the
lineage of every call behind it; checked at load, each problem at its line."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from llmflow.schemas.outputs import (
    ModelCallResult,
    OrgRecordRef,
    Output,
    Retrieved,
    SkippedCall,
    Totals,
)
from llmflow.schemas.projections import Projection
from llmflow.services.sdk.consumer import parse_result
from llmflow.services.worker import app as app_module
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.projection import project
from llmflow.topologies import TopologyError, load_topology
from tests.unit.topologies.test_steps import CLASSIFY, HEAD
from tests.unit.worker.test_error_boundary import FakeMarks, FakeStream, FakeTopic, _raw
from tests.unit.worker.test_pipeline import FakeModels
from tests.unit.worker.test_shadow import LIVE, _pipeline

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def _call(
    name: str, answer: object, *, kind: str = "chat", reused: bool = False
) -> ModelCallResult:
    return ModelCallResult(
        name=name,
        kind=kind,
        call_id=f"id-{name}",
        model="gpt-4o-mini",
        prompt_version=f"{name}-1",
        answer=answer,
        tokens_in=10,
        tokens_out=5,
        latency_ms=12.0,
        reused=reused,
    )


def _output() -> Output:
    calls = [
        _call("classify", {"priority": "urgent", "tags": ["a", "b"]}),
        _call("summarize", "short"),
    ]
    embedding = _call("retrieval", [0.1, 0.2], kind="embedding", reused=True)
    return Output(
        event_id="e-1",
        event_key="C-1",
        tenant="acme",
        source_topic="in",
        source_partition=2,
        source_offset=40,
        topology="support_triage",
        topology_version="2.0.1",
        org_record=OrgRecordRef(table="customers", key="C-1", version="3", offset=7),
        retrieval=Retrieved(
            collection="policies", mode="hybrid", query="q", embedding=embedding, passages=[]
        ),
        images=[],
        calls=calls,
        skipped=[SkippedCall(name="draft_reply", when="false")],
        routes=["escalations"],
        totals=Totals.of(calls, 20.0),
        worker="w:1",
        received_at=NOW,
        produced_at=NOW,
    )


def test_a_projection_takes_the_named_fields_and_keeps_identity_and_lineage() -> None:
    fields = {
        "priority": "calls.classify.answer.priority",
        "second_tag": "calls.classify.answer.tags.1",
        "summary": "calls.summarize.answer",
        "reply": "calls.draft_reply.answer",  # skipped: null
        "missing": "calls.classify.answer.nothing.deeper",
        "cost": "totals.cost_usd",
        "customer": "org_record.key",
    }
    projection = project(_output(), "escalations", fields)
    assert projection.fields == {
        "priority": "urgent",
        "second_tag": "b",
        "summary": "short",
        "reply": None,
        "missing": None,
        "cost": _output().totals.cost_usd,
        "customer": "C-1",
    }
    assert (projection.event_id, projection.event_key, projection.tenant) == ("e-1", "C-1", "acme")
    assert (projection.source_partition, projection.source_offset) == (2, 40)
    assert projection.topology_version == "2.0.1" and projection.route == "escalations"
    assert [(c.name, c.call_id, c.reused) for c in projection.lineage] == [
        ("classify", "id-classify", False),
        ("summarize", "id-summarize", False),
        ("retrieval", "id-retrieval", True),
    ]
    # It is a record of its own contract, and much smaller than the output.
    again = Projection.model_validate_json(projection.model_dump_json())
    assert again == projection and again.record_type == "projection"
    assert len(projection.model_dump_json()) < len(_output().model_dump_json())


ROUTE = """\
routes:
  - name: urgent
    topic: escalations
    fields: {fields}
"""


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("{p: calls.classify.answer.priority}", None),
        ("{}", "routes.0.fields: Value error, name at least one field, or leave `fields` out"),
        ("{p: answer.priority}", "routes.0.fields: Value error, p: 'answer.priority' must be a "
         "dotted path starting with one of calls, event_id, event_key, images, org_record, "
         "produced_at, received_at, retrieval, routes, skipped, source_offset, "
         "source_partition, source_topic, tenant, topology, topology_version, totals, worker"),
        ("{p: calls}", "routes.0.fields: Value error, p: 'calls' must name a call "
         "(calls.<name>...)"),
        ("{p: calls..answer}", "routes.0.fields: Value error, p: 'calls..answer' must be a dotted "
         "path starting with one of calls, event_id, event_key, images, org_record, "
         "produced_at, received_at, retrieval, routes, skipped, source_offset, "
         "source_partition, source_topic, tenant, topology, topology_version, totals, worker"),
        ("{'not a name': tenant}", "routes.0.fields: Value error, field name 'not a name' must "
         "be an identifier"),
        ("{p: calls.clasify.answer}", "routes.0.fields: projects 'clasify': no call"),
    ],
)  # fmt: skip
def test_route_fields_name_the_output_and_its_calls(
    tmp_path: Path, fields: str, expected: str | None
) -> None:
    path = tmp_path / "t.yaml"
    text = HEAD.replace("calls:\n", "") + ROUTE.format(fields=fields) + "calls:\n" + CLASSIFY
    path.write_text(text)
    if expected is None:
        assert load_topology(path).routes[0].fields == {"p": "calls.classify.answer.priority"}
        return
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    line = text.splitlines().index(f"    fields: {fields}") + 1
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [expected]
    assert info.value.problems[0].startswith(f"{path}:{line}:")


def test_the_agent_sends_a_projection_where_the_route_names_fields() -> None:
    topology = load_topology(
        Path(__file__).resolve().parents[3] / "topologies" / "support_triage.yaml"
    )
    route = topology.routes[0]
    assert route.fields  # the shipped escalations route projects
    always = route.model_copy(update={"when": None})
    full = always.model_copy(update={"name": "all", "topic": "all", "fields": None})
    topology = topology.model_copy(update={"routes": [always, full]})
    outputs, projected, whole = FakeTopic(), FakeTopic(), FakeTopic()
    sinks = app_module._Sinks(
        outputs,
        FakeTopic(),
        FakeTopic(),
        {"escalations": projected, "all": whole},
        {"escalations": route.fields},
    )
    with ThreadPoolExecutor(2) as pool:
        body = app_module.agent_body(
            _pipeline(topology, FakeModels(), pool, None), FakeMarks(), Metrics(), sinks
        )

        async def drain() -> None:
            async for _ in body(FakeStream([_raw()]).as_stream()):
                pass

        asyncio.run(drain())
    output = parse_result(outputs.sent[0][1])
    assert isinstance(output, Output) and output.routes == ["escalations", "all"]
    assert whole.sent == outputs.sent
    projection = Projection.model_validate_json(projected.sent[0][1])
    assert projection.fields == project(output, "escalations", route.fields).fields
    assert set(projection.fields) == {"priority", "category", "summary", "reply"}
    assert projected.headers == [{"llmflow.route": b"escalations"}]
    assert LIVE.version == projection.topology_version
