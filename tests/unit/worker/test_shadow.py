"""A topology's shadow in the live worker: sampled events also run through the candidate,
into the shadow topic only, and nothing of the shadow can fail or hold up the live event."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from llmflow.schemas.outputs import Output
from llmflow.services.images.prepare import ImageLimits
from llmflow.services.sdk.consumer import parse_result
from llmflow.services.worker import app as app_module
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.pipeline import Pipeline, SourceMeta
from llmflow.services.worker.ports import Budgets, OverBudget
from llmflow.services.worker.shadow import SHADOW_HEADER, ShadowBudget, ShadowRun, sampled
from llmflow.topologies import Topology, load_topology
from llmflow.topologies.collections import load_collections
from tests.unit.worker.test_error_boundary import FakeMarks, FakeStream, FakeTopic, _raw
from tests.unit.worker.test_pipeline import ORGDATA, FakeBudgets, FakeModels, FakePassages

TOPOLOGIES = Path(__file__).resolve().parents[3] / "topologies"
LIVE = load_topology(TOPOLOGIES / "support_triage.yaml")
CANDIDATE = load_topology(TOPOLOGIES / "candidates" / "support_triage.yaml")


def _pipeline(
    topology: Topology, models: FakeModels, pool: ThreadPoolExecutor, budgets: Budgets | None
) -> Pipeline:
    return Pipeline(
        topology,
        models,
        ORGDATA,
        ImageLimits(),
        pool,
        "test:1",
        budgets=budgets,
        passages=FakePassages(),
        collections=load_collections(),
    )


def _shadowed(
    values: list[bytes | None],
    *,
    share: float = 1.0,
    sink: FakeTopic | None = None,
    budgets: FakeBudgets | None = None,
) -> tuple[FakeTopic, FakeTopic, FakeMarks, Metrics, FakeModels]:
    """Run the agent with a shadow over `values`: (live outputs, shadow topic, marks,
    metrics, the models the shadow asked)."""
    outputs, shadow_sink = FakeTopic(), sink or FakeTopic()
    marks, metrics, candidate_models = FakeMarks(), Metrics(), FakeModels()
    with ThreadPoolExecutor(2) as pool:
        live = _pipeline(LIVE, FakeModels(), pool, None)
        budget = ShadowBudget(budgets or FakeBudgets(), "shadow:support_triage:2.1.0")
        candidate = _pipeline(CANDIDATE, candidate_models, pool, budget)
        shadow = ShadowRun(candidate, shadow_sink, share, budget, metrics)
        sinks = app_module._Sinks(outputs, FakeTopic(), FakeTopic())
        body = app_module.agent_body(live, marks, metrics, sinks, shadow=shadow)

        async def drain() -> None:
            async for _ in body(FakeStream(values).as_stream()):
                pass
            await shadow.drain()

        asyncio.run(drain())
    return outputs, shadow_sink, marks, metrics, candidate_models


def _outcomes(metrics: Metrics, outcome: str) -> float | None:
    labels = {"topology": "support_triage", "version": "2.1.0", "outcome": outcome}
    return metrics.registry.get_sample_value("llmflow_shadow_events_total", labels)


def test_a_share_of_distinct_events_is_sampled_and_a_redelivery_alike() -> None:
    values = [f"event {n}".encode() for n in range(4000)]
    picked = [v for v in values if sampled(v, 0.05)]
    assert 140 <= len(picked) <= 260  # 200 expected; binomial sd about 14
    assert all(sampled(v, 0.05) for v in picked)  # the same bytes, the same answer
    assert all(sampled(v, 1.0) for v in values)
    assert not any(sampled(v, 1e-9) for v in values)


def test_a_sampled_event_is_answered_by_both_and_the_shadow_writes_to_its_topic_only() -> None:
    outputs, shadow, marks, metrics, asked = _shadowed([_raw(), _raw(id="e-2")])
    live = [parse_result(value) for _, value in outputs.sent]
    assert len(live) == 2
    shadowed = [parse_result(value) for _, value in shadow.sent]
    assert [r.topology_version for r in live] == ["2.0.1", "2.0.1"]
    assert [r.topology_version for r in shadowed] == ["2.1.0", "2.1.0"]
    assert sorted(r.event_id or "" for r in shadowed) == ["e-1", "e-2"]
    assert shadow.headers == [{SHADOW_HEADER: b"2.1.0"}] * 2
    assert [key for key, _ in shadow.sent] == [b"k", b"k"]  # under the record's key
    # The candidate's calls are its own: other call ids, its own prompt versions.
    assert isinstance(live[0], Output) and isinstance(shadowed[0], Output)
    live_ids = {c.call_id for r in live if isinstance(r, Output) for c in r.calls}
    assert not live_ids & {a.call_id for a in asked.asked}
    assert shadowed[0].call("classify").prompt_version == "classify-4"
    assert marks.marks == {"3:0": 1, "3:1": 1}
    assert _outcomes(metrics, "output") == 2


def test_events_not_sampled_are_not_shadowed() -> None:
    outputs, shadow, _, metrics, asked = _shadowed([_raw(), _raw(id="e-2")], share=1e-12)
    assert len(outputs.sent) == 2 and shadow.sent == [] and asked.asked == []
    assert _outcomes(metrics, "output") is None


def test_a_shadow_that_fails_to_publish_costs_the_live_event_nothing() -> None:
    outputs, _, marks, metrics, _ = _shadowed([_raw(), None], sink=FakeTopic(fail=True))
    assert len(outputs.sent) == 1  # the tombstone is a dead letter, the event an output
    assert marks.marks == {"3:0": 1, "3:1": 1}
    assert _outcomes(metrics, "failed") == 2


def test_a_shadow_over_its_budget_is_not_run() -> None:
    label = "shadow:support_triage:2.1.0"
    over = FakeBudgets({label: OverBudget("2026-11-30", 1.5, 1.0)})
    outputs, shadow, _, metrics, asked = _shadowed([_raw(), _raw(id="e-2")], budgets=over)
    assert len(outputs.sent) == 2 and shadow.sent == [] and asked.asked == []
    assert _outcomes(metrics, "over_budget") == 2


def test_the_shadow_spends_under_its_own_name_whatever_the_tenant() -> None:
    budgets = FakeBudgets()
    _, _, _, metrics, _ = _shadowed([_raw(), _raw(id="e-2", tenant="acme")], budgets=budgets)
    assert {tenant for tenant, _ in budgets.charged} == {"shadow:support_triage:2.1.0"}
    spent = sum(cost for _, cost in budgets.charged)
    assert spent > 0
    cost = metrics.registry.get_sample_value(
        "llmflow_shadow_cost_usd_total", {"topology": "support_triage", "version": "2.1.0"}
    )
    assert cost == spent


def test_a_dead_letter_of_the_candidate_goes_to_the_shadow_topic_not_the_live_one() -> None:
    outputs, shadow, _, metrics, _ = _shadowed([b"{not json"])
    assert outputs.sent == []  # the live one went to the (fake) dead-letter topic
    assert [parse_result(v).record_type for _, v in shadow.sent] == ["dead_letter"]
    assert _outcomes(metrics, "dead_letter") == 1


def test_source_meta_of_the_shadow_is_the_live_record() -> None:
    _, shadow, _, _, _ = _shadowed([_raw()])
    result = parse_result(shadow.sent[0][1])
    assert (result.source_topic, result.source_partition, result.source_offset) == ("in", 3, 0)
    assert SourceMeta("in", 3, 0).offset == 0


def test_the_live_event_never_waits_for_its_shadow_and_a_busy_shadow_skips() -> None:
    """A candidate whose calls take 2 s: the live events are answered and marked at once,
    two shadowed events run (max_in_flight), the others are counted busy."""
    outputs, shadow_sink, marks, metrics = FakeTopic(), FakeTopic(), FakeMarks(), Metrics()
    slow = FakeModels(latency_s=2.0)
    values: list[bytes | None] = [_raw(id=f"e-{n}") for n in range(6)]
    with ThreadPoolExecutor(2) as pool:
        live = _pipeline(LIVE, FakeModels(), pool, None)
        candidate = _pipeline(CANDIDATE, slow, pool, None)
        shadow = ShadowRun(candidate, shadow_sink, 1.0, None, metrics, max_in_flight=2)
        sinks = app_module._Sinks(outputs, FakeTopic(), FakeTopic())
        body = app_module.agent_body(live, marks, metrics, sinks, shadow=shadow)

        async def run() -> tuple[float, int]:
            started = time.monotonic()
            async for _ in body(FakeStream(values).as_stream()):
                pass
            answered_in = time.monotonic() - started
            running = shadow.in_flight
            await shadow.drain()
            return answered_in, running

        answered_in, running = asyncio.run(run())
    assert answered_in < 1.0 and len(outputs.sent) == 6 and len(marks.marks) == 6
    assert running == 2 and len(shadow_sink.sent) == 2
    assert _outcomes(metrics, "busy") == 4 and _outcomes(metrics, "output") == 2


def test_a_stopping_worker_cancels_its_shadows() -> None:
    async def run() -> int:
        with ThreadPoolExecutor(2) as pool:
            candidate = _pipeline(CANDIDATE, FakeModels(latency_s=30.0), pool, None)
            sink = FakeTopic()
            shadow = ShadowRun(candidate, sink, 1.0, None, Metrics())
            shadow.offer(_raw(), b"k", SourceMeta("in", 0, 1))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await shadow.close()
            assert time.monotonic() - started < 1.0
            return len(sink.sent) + shadow.in_flight

    assert asyncio.run(run()) == 0
