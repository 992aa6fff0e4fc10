"""The pipeline without Kafka, with small fakes for model calls, org data, paid answers and
budgets; one test runs the real model client against the in-process simulator."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI
from PIL import Image

from llmflow.errors import LlmflowError
from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import ModelCallResult, Output
from llmflow.schemas.parked import Parked
from llmflow.services.images.prepare import ImageLimits
from llmflow.services.models.client import ModelCallError, ModelClient, call_id
from llmflow.services.models.retry import RetryPolicy
from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app
from llmflow.services.orgdata import OrgDataStore, OrgRecord, Retriever, sample_records
from llmflow.services.orgdata.search import Hit
from llmflow.services.orgdata.store import OrgDataError
from llmflow.services.worker import pipeline as pipeline_module
from llmflow.services.worker.pipeline import EndpointDown, Pipeline, SourceMeta
from llmflow.services.worker.ports import (
    Budgets,
    ModelRunner,
    OrgData,
    OverBudget,
    PaidCalls,
    Passages,
)
from llmflow.topologies import ModelCall, Topology, load_topology
from llmflow.topologies.collections import load_collections
from llmflow.topologies.spec import Retrieval, Route
from tests.unit.orgdata.helpers import apply_records

SOURCE = SourceMeta("in", 0, 42)
COST = 0.001  # what the fake charges per call


# --- fakes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Asked:
    """One request the fake model received."""

    call: str
    call_id: str
    system: str | None
    user: str
    image_urls: list[str]


class FakeModels:
    """Answers every call (a JSON object when it declares a schema); records what it was
    asked and how many calls ran at once. `fail` maps call names to the error they raise."""

    def __init__(
        self, latency_s: float = 0.0, fail: dict[str, ModelCallError] | None = None
    ) -> None:
        self.latency_s = latency_s
        self.fail = fail or {}
        self.asked: list[Asked] = []
        self.running = 0
        self.peak = 0

    async def run(
        self,
        call: ModelCall,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
    ) -> ModelCallResult:
        self.asked.append(Asked(call.name, call_id, system, user, image_urls))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            self.running -= 1
        if call.name in self.fail:
            raise self.fail[call.name]
        answer: Any = (
            {"fake": True, **_sample(call.output_schema)}
            if call.output_schema
            else f"answer to: {user}"
        )
        if call.kind == "embedding":
            answer = [1.0] * (call.dimensions or 8)
        return ModelCallResult(
            name=call.name,
            kind=call.kind,
            call_id=call_id,
            model=call.model,
            endpoint=call.endpoint,
            prompt_version=call.prompt.version,
            answer=answer,
            tokens_in=len(user.split()),
            tokens_out=0 if call.kind == "embedding" else 5,
            latency_ms=1.0,
            cost_usd=COST,
        )

    def request(self, call: str) -> Asked:
        """The one request made for `call`."""
        (asked,) = [a for a in self.asked if a.call == call]
        return asked


def _sample(schema: dict[str, Any]) -> Any:
    """A value of `schema` (the first of an enum, true for a boolean): what a later call's
    template reads from a structured answer."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {name: _sample(field) for name, field in schema.get("properties", {}).items()}
    return {"boolean": True, "string": "text", "integer": 1, "number": 1.5, "array": []}.get(
        str(kind)
    )


class FakeOrgData:
    def __init__(self, records: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.records = records

    def get(self, table: str, key: str) -> OrgRecord | None:
        data = self.records.get((table, key))
        if data is None:
            return None
        return OrgRecord(table, key, f"v-{key}", 0, 7, data)


class FakePassages:
    """Finds one passage for any query; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    def search(self, collection: str, query: str, vector: Any, **options: Any) -> list[Hit]:
        self.asked.append({"collection": collection, "query": query, "vector": vector, **options})
        record = {"id": "POL-1", "title": "Refunds"}
        return [Hit(11, collection, "POL-1", 0, "Refunds within 30 days.", 0.5, "v1", 3, record)]


class FakePaid:
    def __init__(self) -> None:
        self.answers: dict[str, ModelCallResult] = {}

    def get(self, call_id: str) -> ModelCallResult | None:
        return self.answers.get(call_id)

    async def put(self, result: ModelCallResult) -> None:
        self.answers[result.call_id] = result


class FakeBudgets:
    def __init__(self, over: dict[str, OverBudget] | None = None) -> None:
        self.over = over or {}
        self.charged: list[tuple[str, float]] = []

    def over_budget(self, tenant: str) -> OverBudget | None:
        return self.over.get(tenant)

    def charge(self, tenant: str, cost_usd: float) -> None:
        self.charged.append((tenant, cost_usd))


ORGDATA = FakeOrgData(
    {
        ("customers", "C-1001"): {"name": "Harbor Lane Bakery", "tier": "pro"},
        ("products", "P-2001"): {"name": "Walnut desk", "category": "furniture"},
    }
)


# --- helpers -----------------------------------------------------------------------------


def _event(**fields: Any) -> bytes:
    body = {
        "id": "e-1",
        "kind": "text",
        "key": "C-1001",
        "timestamp": "2026-01-02T03:04:05Z",
        "source": "helpdesk",
        "text": "My invoice was charged twice and I need a refund today",
    }
    return json.dumps({**body, **fields}).encode()


def _image_event(data_base64: str) -> bytes:
    body = json.loads(_event(key="P-2001"))
    body.pop("text")
    return json.dumps({**body, "kind": "image", "image": {"data_base64": data_base64}}).encode()


def _jpeg_b64(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (0, 0, 255)).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
def topology(project_root: Path) -> Callable[[str], Topology]:
    def load(name: str) -> Topology:
        return load_topology(project_root / "topologies" / f"{name}.yaml")

    return load


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
def make_pipeline(
    topology: Callable[[str], Topology], executor: ThreadPoolExecutor
) -> PipelineFactory:
    def make(
        spec: str | Topology = "support_triage",
        models: ModelRunner | None = None,
        orgdata: OrgData = ORGDATA,
        paid: PaidCalls | None = None,
        budgets: Budgets | None = None,
        passages: Passages | None = None,
    ) -> Pipeline:
        return Pipeline(
            topology(spec) if isinstance(spec, str) else spec,
            models or FakeModels(),
            orgdata,
            ImageLimits(),
            executor,
            "test:1",
            paid=paid,
            budgets=budgets,
            passages=passages or FakePassages(),
            collections=load_collections(),
        )

    return make


# --- outputs -----------------------------------------------------------------------------


async def test_text_event_gets_every_answer_and_its_lineage(
    make_pipeline: PipelineFactory,
) -> None:
    models = FakeModels()
    pipeline = make_pipeline(models=models)
    result = await pipeline.handle(_event(), SOURCE)
    assert isinstance(result, Output), result
    assert [c.name for c in result.calls] == ["classify", "summarize", "draft_reply"]
    for call, answered in zip(pipeline.topology.calls, result.calls, strict=True):
        assert answered.call_id == call_id("e-1", pipeline.topology, call)
        assert models.request(call.name).call_id == answered.call_id
        assert models.request(call.name).image_urls == []
    assert result.call("classify").answer == {
        "fake": True,
        "category": "billing",
        "priority": "low",
        "sentiment": "negative",
    }
    assert result.call("summarize").answer == (
        "answer to: My invoice was charged twice and I need a refund today"
    )
    # The prompts were rendered with the customer's record, and the output cites it.
    assert models.request("draft_reply").user.startswith("Dear Harbor Lane Bakery (pro plan)")
    assert models.request("classify").user.startswith("Customer tier: pro")
    assert result.org_record is not None
    assert (result.org_record.table, result.org_record.version) == ("customers", "v-C-1001")
    assert (result.source_topic, result.source_partition, result.source_offset) == ("in", 0, 42)
    # The totals count the query's embedding too (it has no tokens out).
    assert result.retrieval is not None and result.retrieval.embedding is not None
    assert result.totals.tokens_out == sum(c.tokens_out for c in result.calls) == 15
    assert result.totals.model_calls == 4
    assert result.totals.cost_usd == pytest.approx(4 * COST)
    assert result.worker == "test:1"


async def test_unknown_customer_is_answered_without_a_record(
    make_pipeline: PipelineFactory,
) -> None:
    models = FakeModels()
    result = await make_pipeline(models=models).handle(_event(key="C-9999"), SOURCE)
    assert isinstance(result, Output)
    assert result.org_record is not None and result.org_record.version is None
    assert models.request("draft_reply").user.startswith("Dear customer (unknown plan)")


async def test_calls_and_events_run_concurrently(make_pipeline: PipelineFactory) -> None:
    models = FakeModels(latency_s=0.05)
    pipeline = make_pipeline(models=models)
    results = await asyncio.gather(
        *(pipeline.handle(_event(id=f"e-{n}"), SOURCE) for n in range(20))
    )
    assert all(isinstance(r, Output) for r in results)
    # Every event at once, with classify and summarize; draft_reply needs both.
    assert models.peak == 20 * 2


# --- dead letters, one per stage ---------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stage", "kind"),
    [
        (b"\xff\xfe not json", "decode", "not_json"),
        (_event(text=""), "validate", "contract_violation"),
        (
            _event(kind="image", image={"url": "file:///x.jpg"}, text=None),
            "validate",
            "contract_violation",
        ),
    ],
)
async def test_bad_input_becomes_a_dead_letter(
    make_pipeline: PipelineFactory, raw: bytes, stage: str, kind: str
) -> None:
    models = FakeModels()
    result = await make_pipeline(models=models).handle(raw, SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == (stage, kind)
    assert result.original_b64 is not None and base64.b64decode(result.original_b64) == raw
    assert result.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert result.original_size == len(raw)
    assert (result.source_topic, result.source_offset) == ("in", 42)
    assert models.asked == []


async def test_wrong_kind_is_routed_to_dead_letters(make_pipeline: PipelineFactory) -> None:
    body = json.loads(_event())
    body.pop("text")
    raw = json.dumps({**body, "kind": "image", "image": {"url": "file:///x.jpg"}}).encode()
    result = await make_pipeline().handle(raw, SOURCE)
    assert isinstance(result, DeadLetter) and result.stage == "route"
    assert result.event_id == "e-1"


async def test_missing_required_record_is_an_enrich_dead_letter(
    make_pipeline: PipelineFactory, topology: Callable[[str], Topology]
) -> None:
    spec = topology("support_triage")
    assert spec.enrichment is not None
    required = spec.enrichment.model_copy(update={"required": True})
    pipeline = make_pipeline(spec.model_copy(update={"enrichment": required}))
    assert isinstance(await pipeline.handle(_event(), SOURCE), Output)
    result = await pipeline.handle(_event(key="C-9999"), SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == ("enrich", "record_not_found")


async def test_template_error_is_a_prompt_dead_letter(
    make_pipeline: PipelineFactory, topology: Callable[[str], Topology]
) -> None:
    spec = topology("support_triage")
    call = spec.calls[1]
    broken = call.model_copy(
        update={"prompt": call.prompt.model_copy(update={"user": "{{ event.nope }}"})}
    )
    spec = spec.model_copy(update={"calls": [spec.calls[0], broken]})
    result = await make_pipeline(spec).handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == ("prompt", "UndefinedError")
    assert "nope" in result.message


async def test_a_request_the_model_refuses_is_a_model_dead_letter(
    make_pipeline: PipelineFactory,
) -> None:
    error = ModelCallError("summarize", "http_400", "refused", transient=False, attempts=1)
    result = await make_pipeline(models=FakeModels(fail={"summarize": error})).handle(
        _event(), SOURCE
    )
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == ("model", "http_400")
    assert result.message == "call 'summarize': refused"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ModelCallError("summarize", "http_429", "busy", transient=True), "http_429"),
        (ModelCallError("summarize", "connection_refused", "down", transient=True), "conn"),
        (
            ModelCallError("summarize", "http_401", "bad key", transient=False, endpoint_down=True),
            "http_401",
        ),
    ],
)
async def test_an_endpoint_that_is_down_is_no_fault_of_the_event(
    make_pipeline: PipelineFactory, error: ModelCallError, kind: str
) -> None:
    error.endpoints = ("default", "backup")
    with pytest.raises(EndpointDown) as raised:
        await make_pipeline(models=FakeModels(fail={"summarize": error})).handle(_event(), SOURCE)
    down = raised.value
    assert down.endpoints == ("default", "backup") and error.call in down.reason
    # What the event gets if the worker stops waiting for the endpoint:
    assert down.dead_letter.stage == "model" and down.dead_letter.event_id == "e-1"
    assert down.dead_letter.error_kind.startswith(error.kind)


async def test_a_bad_request_is_dead_lettered_even_while_the_endpoint_struggles(
    make_pipeline: PipelineFactory,
) -> None:
    models = FakeModels(
        fail={
            "classify": ModelCallError("classify", "http_400", "bad", transient=False),
            "summarize": ModelCallError("summarize", "timeout", "slow", transient=True),
        }
    )
    result = await make_pipeline(models=models).handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter) and result.error_kind == "http_400"


# --- calls that need each other ---------------------------------------------------------


def _graph(**calls: dict[str, Any]) -> Topology:
    """A text topology of chat calls: name -> extra fields (needs, when, prompt user)."""
    return Topology.model_validate(
        {
            "name": "graph",
            "version": "1",
            "input_topic": "in",
            "output_topic": "out",
            "dead_letter_topic": "dlq",
            "accepts": ["text"],
            "calls": [
                {
                    "name": name,
                    "model": "m",
                    "prompt": {"version": f"{name}-1", "user": extra.get("user", name)},
                    **{field: value for field, value in extra.items() if field != "user"},
                }
                for name, extra in calls.items()
            ],
        }
    )


DIAMOND: dict[str, dict[str, Any]] = {
    "a": {"output_schema": {"type": "object"}},
    "b": {"needs": ["a"], "user": "b after {{ calls.a.answer.fake }}"},
    "c": {"needs": ["a"], "user": "c"},
    "d": {"needs": ["b", "c"], "user": "d: {{ calls.b.answer }} | {{ calls.c.answer }}"},
}


async def test_a_graph_of_calls_takes_the_time_of_its_critical_path(
    make_pipeline: PipelineFactory,
) -> None:
    models = FakeModels(latency_s=0.3)
    started = asyncio.get_running_loop().time()
    result = await make_pipeline(_graph(**DIAMOND), models=models).handle(_event(), SOURCE)
    elapsed = asyncio.get_running_loop().time() - started
    assert isinstance(result, Output), result
    assert [call.name for call in result.calls] == ["a", "b", "c", "d"]
    assert models.peak == 2  # b and c at once
    assert 0.9 <= elapsed < 1.1  # a, then b and c together, then d: 3 x 0.3 s, not 4
    order = [asked.call for asked in models.asked]
    assert order[0] == "a" and sorted(order[1:3]) == ["b", "c"] and order[3] == "d"
    assert models.request("b").user == "b after True"
    assert models.request("d").user == "d: answer to: b after True | answer to: c"
    assert result.totals.model_calls == 4 and result.skipped == []


async def test_a_false_condition_skips_the_call_and_those_that_need_it(
    make_pipeline: PipelineFactory,
) -> None:
    models, budgets = FakeModels(), FakeBudgets()
    topology = _graph(
        **{
            **DIAMOND,
            "c": {"needs": ["a"], "when": "calls.a.answer.fake and event.tenant == 'acme'"},
            "e": {"when": "'refund' in event.text"},
        }
    )
    result = await make_pipeline(topology, models=models, budgets=budgets).handle(_event(), SOURCE)
    assert isinstance(result, Output), result
    assert [call.name for call in result.calls] == ["a", "b", "e"]
    condition = "calls.a.answer.fake and event.tenant == 'acme'"
    assert [s.model_dump() for s in result.skipped] == [
        {"name": "c", "when": condition, "because": None},
        {"name": "d", "when": condition, "because": "c"},
    ]
    assert sorted(asked.call for asked in models.asked) == ["a", "b", "e"]
    assert result.totals.model_calls == 3 and len(budgets.charged) == 3  # skipped: free
    acme = await make_pipeline(topology, models=FakeModels()).handle(
        _event(id="e-2", tenant="acme"), SOURCE
    )
    assert isinstance(acme, Output) and [c.name for c in acme.calls] == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(
    ("when", "kind"),
    [
        ("calls.a.answer.missing == 1", "UndefinedError"),
        ("calls.a.answer.fake > 'x'", "TypeError"),
        ("event.text.__class__", "SecurityError"),
    ],
)
async def test_a_condition_that_cannot_be_evaluated_makes_a_dead_letter(
    make_pipeline: PipelineFactory, when: str, kind: str
) -> None:
    models = FakeModels()
    topology = _graph(a={"output_schema": {"type": "object"}}, b={"needs": ["a"], "when": when})
    result = await make_pipeline(topology, models=models).handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter), result
    assert (result.stage, result.error_kind) == ("prompt", kind)
    assert result.message.startswith("call 'b', when: ")
    assert [asked.call for asked in models.asked] == ["a"]


async def test_a_redelivered_event_resumes_from_the_steps_paid_for(
    make_pipeline: PipelineFactory,
) -> None:
    paid = FakePaid()
    failing = FakeModels(fail={"d": ModelCallError("d", "http_400", "refused", transient=False)})
    first = await make_pipeline(_graph(**DIAMOND), models=failing, paid=paid).handle(
        _event(), SOURCE
    )
    assert isinstance(first, DeadLetter) and first.stage == "model"
    assert sorted(paid.answers) == sorted(
        call_id("e-1", _graph(**DIAMOND), call) for call in _graph(**DIAMOND).calls[:3]
    )
    models = FakeModels()
    again = await make_pipeline(_graph(**DIAMOND), models=models, paid=paid).handle(
        _event(), SOURCE
    )
    assert isinstance(again, Output), again
    assert [asked.call for asked in models.asked] == ["d"]  # a, b and c were paid for
    assert [call.reused for call in again.calls] == [True, True, True, False]
    assert models.request("d").user == "d: answer to: b after True | answer to: c"


async def test_a_failed_step_stops_the_steps_that_need_it(make_pipeline: PipelineFactory) -> None:
    models = FakeModels(fail={"a": ModelCallError("a", "http_400", "refused", transient=False)})
    result = await make_pipeline(_graph(**DIAMOND), models=models).handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter) and (result.stage, result.error_kind) == (
        "model",
        "http_400",
    )
    assert [asked.call for asked in models.asked] == ["a"]


class SlowPaid(FakePaid):
    """Stores an answer only after `delay_s`, as a write acked by the broker would."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def put(self, result: ModelCallResult) -> None:
        await asyncio.sleep(self.delay_s)
        await super().put(result)


async def test_the_next_steps_start_while_an_answer_is_stored(
    make_pipeline: PipelineFactory,
) -> None:
    """Storing an answer is off the critical path: the event waits for every answer to be
    stored, at its end, not before each step that needs one."""
    paid = SlowPaid(0.25)
    models = FakeModels(latency_s=0.2)
    started = asyncio.get_running_loop().time()
    result = await make_pipeline(_graph(**DIAMOND), models=models, paid=paid).handle(
        _event(), SOURCE
    )
    elapsed = asyncio.get_running_loop().time() - started
    assert isinstance(result, Output), result
    assert len(paid.answers) == 4  # all stored before the output
    assert elapsed < 0.6 + 0.25 + 0.2  # 3 calls and the last store; not 3 x (0.2 + 0.25)


def _routed(**routes: str | None) -> Topology:
    topology = _graph(classify={"output_schema": {"type": "object"}}, summarize={})
    return topology.model_copy(
        update={
            "routes": [
                Route(name=name, topic=f"routed.{name}", when=when) for name, when in routes.items()
            ]
        }
    )


async def test_routes_whose_conditions_hold_are_listed_in_the_output(
    make_pipeline: PipelineFactory, caplog: pytest.LogCaptureFixture
) -> None:
    topology = _routed(
        every=None,
        faked="calls.classify.answer.fake and 'refund' in event.text",
        other="calls.classify.answer.fake == false",
        missing="calls.classify.answer.priority == 'urgent'",  # no such field: false
        unknown_call="calls.nothing.answer",  # a call that did not run: false
        broken="calls.classify.answer.fake > 'x'",  # fails: not routed, with a warning
    )
    result = await make_pipeline(topology).handle(_event(), SOURCE)
    assert isinstance(result, Output), result
    assert result.routes == ["every", "faked"]
    assert "route broken not taken for event e-1: its condition failed: TypeError" in caplog.text


# --- answers paid for once, budgets ------------------------------------------------------


async def test_a_redelivered_event_reuses_every_answer_paid_for(
    make_pipeline: PipelineFactory,
) -> None:
    models, paid, budgets = FakeModels(), FakePaid(), FakeBudgets()
    pipeline = make_pipeline(models=models, paid=paid, budgets=budgets)
    first = await pipeline.handle(_event(), SOURCE)
    # The three calls and the query's embedding.
    assert isinstance(first, Output) and len(paid.answers) == 4
    again = await pipeline.handle(_event(), SOURCE)
    assert isinstance(again, Output)
    assert len(models.asked) == 4  # nothing was asked twice
    assert again.retrieval is not None and again.retrieval.embedding is not None
    for reused in [*again.calls, again.retrieval.embedding]:
        assert reused.reused and reused.attempts == 0 and reused.latency_ms == 0
    assert [c.answer for c in again.calls] == [c.answer for c in first.calls]
    assert budgets.charged == [("C-1001", COST)] * 4  # reused answers are not charged again


async def test_only_the_calls_not_paid_for_run(make_pipeline: PipelineFactory) -> None:
    models, paid = FakeModels(), FakePaid()
    pipeline = make_pipeline(models=models, paid=paid)
    classify = pipeline.topology.calls[0]
    earlier = await FakeModels().run(
        classify,
        call_id=call_id("e-1", pipeline.topology, classify),
        system=None,
        user="earlier",
        image_urls=[],
    )
    await paid.put(earlier)
    result = await pipeline.handle(_event(), SOURCE)
    assert isinstance(result, Output)
    # The query's embedding first (the prompts need the passages), then what is not paid for.
    assert [a.call for a in models.asked] == ["retrieval", "summarize", "draft_reply"]
    assert [c.reused for c in result.calls] == [True, False, False]


async def test_tenant_over_budget_is_parked_and_others_are_charged(
    make_pipeline: PipelineFactory,
) -> None:
    models = FakeModels()
    budgets = FakeBudgets({"thrifty": OverBudget("2026-01-02", 0.75, 0.5)})
    pipeline = make_pipeline(models=models, budgets=budgets)
    raw = _event(tenant="thrifty")
    parked = await pipeline.handle(raw, SOURCE)
    assert isinstance(parked, Parked), parked
    assert (parked.tenant, parked.reason, parked.period) == ("thrifty", "budget", "2026-01-02")
    assert (parked.spent_usd, parked.budget_usd) == (0.75, 0.5)
    assert parked.original_b64 is not None  # a small event rides along
    assert base64.b64decode(parked.original_b64) == raw and parked.source_offset == 42
    assert models.asked == [] and budgets.charged == []

    answered = await pipeline.handle(_event(tenant="generous"), SOURCE)
    assert isinstance(answered, Output)
    assert budgets.charged == [("generous", COST)] * 4  # three calls and the query embedding
    # Without a tenant the event's key is charged.
    await pipeline.handle(_event(id="e-2"), SOURCE)
    assert budgets.charged[-1] == ("C-1001", COST)


# --- images ------------------------------------------------------------------------------


async def test_image_event_is_prepared_for_every_vision_call(
    make_pipeline: PipelineFactory,
) -> None:
    models, passages = FakeModels(), FakePassages()
    result = await make_pipeline("product_images", models=models, passages=passages).handle(
        _image_event(_jpeg_b64((2048, 1024))), SOURCE
    )
    assert isinstance(result, Output), result
    assert [(i.width, i.height, i.original_width) for i in result.images] == [(1024, 512, 2048)]
    assert result.org_record is not None and result.org_record.table == "products"
    (url,) = models.request("alt_text").image_urls
    vision = [a for a in models.asked if a.call != "retrieval"]
    assert all(a.image_urls == [url] for a in vision) and len(vision) == 3
    assert models.request("retrieval").image_urls == []  # the query embedding is text only
    header, _, data = url.partition(",")
    assert header == "data:image/jpeg;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        assert image.size == (1024, 512)
        pixel = image.convert("RGB").getpixel((512, 256))
    assert isinstance(pixel, tuple)
    red, green, blue = pixel
    # JPEG re-encoding may move a channel by a step or two.
    assert red <= 2 and green <= 2 and blue >= 253
    assert models.request("alt_text").user == "Alt text for a photo of Walnut desk."
    # The policies searched for are the product's category's, in English.
    (asked,) = passages.asked
    assert "furniture Walnut desk" in asked["query"] and asked["filters"] == {"language": "en"}
    assert "Policy Refunds [policies/POL-1#0]: Refunds within 30 days." in (
        models.request("policy_check").user
    )


async def test_corrupt_image_is_an_image_dead_letter(make_pipeline: PipelineFactory) -> None:
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    result = await make_pipeline("product_images").handle(_image_event(junk), SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == ("image", "unreadable")


# --- retrieval ---------------------------------------------------------------------------


def _retrieving(topology: Topology, **changes: Any) -> Topology:
    """`topology` with its retrieval step changed (validated, as a topology file would be)."""
    assert topology.retrieval is not None
    spec = Retrieval.model_validate({**topology.retrieval.model_dump(), **changes})
    return topology.model_copy(update={"retrieval": spec})


class FailingPassages(FakePassages):
    def search(self, collection: str, query: str, vector: Any, **options: Any) -> list[Hit]:
        super().search(collection, query, vector, **options)
        raise OrgDataError("'policies' has no filter colour")


async def test_passages_found_for_the_event_reach_the_prompts_and_the_output(
    make_pipeline: PipelineFactory,
) -> None:
    models, passages = FakeModels(), FakePassages()
    pipeline = make_pipeline(models=models, passages=passages)
    result = await pipeline.handle(_event(), SOURCE)
    assert isinstance(result, Output), result
    text = "My invoice was charged twice and I need a refund today"
    # The query is rendered from the event and embedded (a call of its own, text only).
    embedded = models.request("retrieval")
    assert (embedded.user, embedded.system, embedded.image_urls) == (text, None, [])
    (asked,) = passages.asked
    assert (asked["collection"], asked["query"], asked["mode"], asked["top_k"]) == (
        "policies",
        text,
        "hybrid",
        3,
    )
    assert asked["filters"] == {}
    vector = asked["vector"]
    assert vector.dtype == np.float32 and vector.tolist() == [1.0] * 256  # the collection's size
    # The prompts see the passages as `docs`.
    assert "Policy Refunds [policies/POL-1#0]: Refunds within 30 days." in (
        models.request("draft_reply").user
    )
    # The output cites the passage and the embedding call, which is not one of `calls`.
    retrieved = result.retrieval
    assert retrieved is not None
    assert (retrieved.collection, retrieved.mode, retrieved.query) == ("policies", "hybrid", text)
    assert [p.model_dump() for p in retrieved.passages] == [
        {
            "id": "policies/POL-1#0",
            "key": "POL-1",
            "n": 0,
            "version": "v1",
            "offset": 3,
            "score": 0.5,
        }
    ]
    embedding = retrieved.embedding
    assert embedding is not None
    assert (embedding.name, embedding.kind, embedding.model) == (
        "retrieval",
        "embedding",
        "text-embedding-3-small",
    )
    query_call = pipeline_module._query_call(pipeline.topology, load_collections())
    assert query_call is not None
    assert embedding.call_id == call_id("e-1", pipeline.topology, query_call) == embedded.call_id
    assert "retrieval" not in [c.name for c in result.calls]
    answered = [*result.calls, embedding]
    assert result.totals.model_calls == 4
    assert result.totals.tokens_in == sum(c.tokens_in for c in answered)
    assert result.totals.cost_usd == pytest.approx(sum(c.cost_usd for c in answered))
    assert result.org_record is not None and result.org_record.offset == 7


async def test_a_redelivered_event_reuses_the_query_embedding_paid_for(
    make_pipeline: PipelineFactory,
) -> None:
    models, paid, passages = FakeModels(), FakePaid(), FakePassages()
    pipeline = make_pipeline(models=models, paid=paid, passages=passages)
    first = await pipeline.handle(_event(), SOURCE)
    again = await pipeline.handle(_event(), SOURCE)
    assert isinstance(first, Output) and isinstance(again, Output)
    assert [a.call for a in models.asked].count("retrieval") == 1
    assert first.retrieval is not None and first.retrieval.embedding is not None
    assert again.retrieval is not None and again.retrieval.embedding is not None
    assert not first.retrieval.embedding.reused and again.retrieval.embedding.reused
    assert again.retrieval.embedding.call_id == first.retrieval.embedding.call_id
    # The search runs again, with the vector paid for the first time.
    assert len(passages.asked) == 2
    assert passages.asked[1]["vector"].tolist() == passages.asked[0]["vector"].tolist()


async def test_the_events_tenant_scopes_the_search_not_its_key(
    make_pipeline: PipelineFactory,
) -> None:
    passages, budgets = FakePassages(), FakeBudgets()
    pipeline = make_pipeline(passages=passages, budgets=budgets)
    assert isinstance(await pipeline.handle(_event(tenant="acme"), SOURCE), Output)
    assert isinstance(await pipeline.handle(_event(id="e-2"), SOURCE), Output)
    assert [a["tenant"] for a in passages.asked] == ["acme", None]  # no tenant: shared only
    # The query embedding is charged like any call: to the key when there is no tenant.
    assert budgets.charged[0] == ("acme", COST) and budgets.charged[-1] == ("C-1001", COST)


async def test_a_failed_search_is_a_retrieve_dead_letter(make_pipeline: PipelineFactory) -> None:
    models, passages = FakeModels(), FailingPassages()
    result = await make_pipeline(models=models, passages=passages).handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter), result
    assert (result.stage, result.error_kind) == ("retrieve", "search_failed")
    assert result.message == "'policies' has no filter colour" and result.event_id == "e-1"
    assert result.schema_version == 4
    assert [a.call for a in models.asked] == ["retrieval"]  # no call ran without passages


async def test_a_failed_query_embedding_is_a_model_dead_letter(
    make_pipeline: PipelineFactory,
) -> None:
    error = ModelCallError("retrieval", "http_400", "refused", transient=False, attempts=1)
    models, passages = FakeModels(fail={"retrieval": error}), FakePassages()
    result = await make_pipeline(models=models, passages=passages).handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter), result
    assert (result.stage, result.error_kind) == ("model", "http_400")
    assert result.message == "retrieval query: call 'retrieval': refused"
    assert passages.asked == [] and [a.call for a in models.asked] == ["retrieval"]


async def test_an_embedding_endpoint_that_is_down_is_no_fault_of_the_event(
    make_pipeline: PipelineFactory,
) -> None:
    error = ModelCallError("retrieval", "connection_refused", "down", transient=True)
    error.endpoints = ("default",)
    with pytest.raises(EndpointDown) as raised:
        await make_pipeline(models=FakeModels(fail={"retrieval": error})).handle(_event(), SOURCE)
    assert raised.value.endpoints == ("default",)
    letter = raised.value.dead_letter
    assert (letter.stage, letter.error_kind) == ("model", "connection_refused_retries_exhausted")


async def test_filters_are_rendered_from_the_org_record(
    make_pipeline: PipelineFactory, topology: Callable[[str], Topology]
) -> None:
    spec = _retrieving(topology("support_triage"), filters={"language": "{{ org.language }}"})
    orgdata = FakeOrgData({("customers", "C-1001"): {"name": "Bäckerei Hafen", "language": "de"}})
    passages = FakePassages()
    pipeline = make_pipeline(spec, orgdata=orgdata, passages=passages)
    assert isinstance(await pipeline.handle(_event(), SOURCE), Output)
    assert passages.asked[0]["filters"] == {"language": "de"}
    # Without a record the filter cannot be rendered: nothing is searched or called.
    models = FakeModels()
    pipeline = make_pipeline(spec, models=models, orgdata=orgdata, passages=passages)
    result = await pipeline.handle(_event(key="C-9999"), SOURCE)
    assert isinstance(result, DeadLetter), result
    assert (result.stage, result.error_kind) == ("retrieve", "UndefinedError")
    assert "language" in result.message
    assert len(passages.asked) == 1 and models.asked == []


async def test_keyword_retrieval_embeds_nothing(
    make_pipeline: PipelineFactory,
    topology: Callable[[str], Topology],
    executor: ThreadPoolExecutor,
) -> None:
    spec = _retrieving(topology("support_triage"), mode="keyword")
    models, passages = FakeModels(), FakePassages()
    result = await make_pipeline(spec, models=models, passages=passages).handle(_event(), SOURCE)
    assert isinstance(result, Output), result
    assert "retrieval" not in [a.call for a in models.asked]
    (asked,) = passages.asked
    assert asked["vector"] is None and asked["mode"] == "keyword"
    assert result.retrieval is not None and result.retrieval.embedding is None
    assert [p.id for p in result.retrieval.passages] == ["policies/POL-1#0"]
    assert result.totals.model_calls == 3 and result.totals.cost_usd == pytest.approx(3 * COST)
    # Nothing to embed: no collection needs declaring.
    Pipeline(spec, models, ORGDATA, ImageLimits(), executor, "test:1", passages=passages)


def test_a_query_to_embed_needs_its_collection(
    topology: Callable[[str], Topology], executor: ThreadPoolExecutor
) -> None:
    for mode in ("vector", "hybrid"):
        spec = _retrieving(topology("support_triage"), mode=mode)
        with pytest.raises(LlmflowError, match="no document collection 'policies'"):
            Pipeline(
                spec,
                FakeModels(),
                ORGDATA,
                ImageLimits(),
                executor,
                "test:1",
                passages=FakePassages(),
                collections={},
            )
    with pytest.raises(LlmflowError, match="the pipeline needs passages"):
        Pipeline(topology("support_triage"), FakeModels(), ORGDATA, ImageLimits(), executor, "t")


# --- the real model client ---------------------------------------------------------------


@pytest.fixture
async def simulated_client() -> AsyncIterator[ModelClient]:
    server = TestServer(make_app(SimulatorConfig()))
    await server.start_server()
    openai = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k", max_retries=0)
    client = ModelClient({"default": openai}, policy=RetryPolicy(max_attempts=1))
    yield client
    await client.close()
    await server.close()


async def test_the_real_model_client_answers_chat_structured_and_vision_calls(
    make_pipeline: PipelineFactory, simulated_client: ModelClient
) -> None:
    """What fakes cannot show: the client sends rendered prompts, schemas and prepared images
    in a form an OpenAI-compatible endpoint accepts, and parses what comes back."""
    store = OrgDataStore(":memory:", load_collections())
    for table, records in sample_records().items():
        apply_records(store, table, records)
    try:
        text = make_pipeline(models=simulated_client, orgdata=store, passages=Retriever(store))
        result = await text.handle(_event(), SOURCE)
        assert isinstance(result, Output), result
        assert result.call("summarize").answer.startswith(
            "[sim gpt-4o-mini] re: My invoice was charged twice and I need a refund today #"
        )
        assert result.call("draft_reply").answer.startswith(
            "[sim gpt-4o-mini] re: Dear Harbor Lane Bakery"
        )
        assert set(result.call("classify").answer) == {"category", "priority", "sentiment"}
        assert result.totals.tokens_in > 0 and result.totals.cost_usd == 0  # no price table

        images = make_pipeline(
            "product_images", models=simulated_client, orgdata=store, passages=Retriever(store)
        )
        # Caption and alt text follow a compliant policy check only: the simulator's
        # verdict follows the input, so photos of a few sizes see both ways.
        verdicts = []
        for width in range(2048, 2048 + 8 * 64, 64):
            pictured = await images.handle(_image_event(_jpeg_b64((width, 1024))), SOURCE)
            assert isinstance(pictured, Output), pictured
            assert set(pictured.call("policy_check").answer) == {"compliant", "issues"}
            compliant = pictured.call("policy_check").answer["compliant"]
            verdicts.append(compliant)
            ran = [call.name for call in pictured.calls]
            if not compliant:
                assert ran == ["policy_check"]
                assert [s.name for s in pictured.skipped] == ["caption", "alt_text"]
                continue
            assert ran == ["policy_check", "caption", "alt_text"] and pictured.skipped == []
            alt_text = pictured.call("alt_text").answer
            size = rf"\[image 1024x{1024 * 1024 // width} RGB mean #(\w{{6}})\]"
            assert re.search(size, alt_text) is not None, alt_text
        assert True in verdicts and False in verdicts, verdicts
    finally:
        store.close()
