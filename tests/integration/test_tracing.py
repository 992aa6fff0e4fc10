"""The trace context through a real broker and a running worker: records sent with a
`traceparent` come out (output, dead letter) carrying the same trace, on and off."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from dev.launch import Child
from llmflow.services.sdk import text_event
from llmflow.topologies.loader import load_topology

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()
ON = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}


@pytest.mark.parametrize("env", [ON, {}], ids=["on", "off"])
def test_results_carry_the_trace_of_their_input_record(
    env: dict[str, str],
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    path = topology_copy("support_triage")
    spec = load_topology(path)
    worker = workers([path], {**worker_env(modelsim()), **env})
    headers = [("traceparent", TRACEPARENT), ("tracestate", b"upstream=1")]
    good = text_event("my parcel arrived broken", key="C-1001", event_id="traced-1")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(spec.input_topic, good.model_dump_json().encode(), b"C-1001", headers)
    producer.send(spec.input_topic, b"not json", b"C-1001", headers)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        spec.output_topic,
        spec.dead_letter_topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=90_000,
    )
    seen: dict[str, dict[str, bytes]] = {}
    for record in consumer:
        seen[record.topic] = dict(record.headers)
        if len(seen) == 2:
            break
    consumer.close()
    assert set(seen) == {spec.output_topic, spec.dead_letter_topic}, worker.log_tail()
    for topic, got in seen.items():
        parent = got["traceparent"].decode().split("-")
        assert parent[1] == TRACE_ID, (topic, got)
        assert got["tracestate"] == b"upstream=1"
        if env:  # on: the worker's publish span is the parent now
            assert parent[2] != "00f067aa0ba902b7"
        else:  # off: passed through as it came
            assert got["traceparent"] == TRACEPARENT
    assert seen[spec.dead_letter_topic]["llmflow.error.kind"] == b"not_json"

    if env:  # the console exporter prints each span as JSON in the worker's log
        deadline = time.monotonic() + 30
        wanted = [f'"name": "{name}"' for name in (f"consume {spec.input_topic}", "enrich")]
        while not all(text in worker.log_tail(1_000_000) for text in wanted):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
        assert f'"trace_id": "0x{TRACE_ID}"' in worker.log_tail(1_000_000)
