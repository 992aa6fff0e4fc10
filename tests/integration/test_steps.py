"""Calls that need each other, on a real broker with the model simulator: a graph of four
steps answers in the time of its critical path."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from dev.launch import Child
from dev.topologies import GRAPH_CALLS, as_graph, critical_path_ms
from llmflow.schemas.outputs import Output
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event

pytestmark = pytest.mark.integration

LATENCY_MS = 500


def test_a_graph_of_four_steps_answers_in_the_time_of_its_critical_path(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = topology_copy("support_triage")
    spec = as_graph(path)
    sim = modelsim("--latency-ms", str(LATENCY_MS))
    workers([path], worker_env(sim))

    sent = [f"dag-{n}" for n in range(30)]
    with EventProducer(kafka_bootstrap) as producer:
        for event_id in sent:
            text = f"{event_id}: order 1234 arrived broken"
            producer.send(spec["input_topic"], text_event(text, key="C-1001", event_id=event_id))
    with ResultConsumer(kafka_bootstrap, [spec["output_topic"], spec["dead_letter_topic"]]) as c:
        results = list(c.results(idle_timeout_s=60, limit=len(sent)))
    outputs = [r for r in results if isinstance(r, Output)]
    assert sorted(o.event_id for o in outputs) == sorted(sent), results[:3]

    ratios, overlaps = [], []
    for output in outputs:
        assert [call.name for call in output.calls] == [call["name"] for call in GRAPH_CALLS]
        ms = {call.name: call.latency_ms for call in output.calls}
        critical = critical_path_ms(ms)
        ratios.append(output.totals.latency_ms / critical)
        overlaps.append(output.totals.latency_ms / sum(ms.values()))
        assert output.call("reply").answer.count(" / ") == 1  # it saw both answers
    # Each event's time is its critical path (three calls), not the sum of its four (4/3 of
    # it here). The 30 events arrive at once, on 2 cores shared with the simulator and the
    # broker: 1.06-1.11 measured, and the bound leaves room for a busier machine; `make
    # bench` holds the graph to 1.1 at an even load.
    assert statistics.median(ratios) <= 1.25, ratios
    assert max(overlaps) < 0.9, overlaps
    with capsys.disabled():
        print(
            f"\n[graph test] 4 steps, {LATENCY_MS} ms a call: event time / critical path "
            f"p50 {statistics.median(ratios):.3f}, max {max(ratios):.3f}; "
            f"/ sum of the four calls p50 {statistics.median(overlaps):.3f}"
        )
