"""Adding a worker mid-stream: the group splits the partitions, every event is answered once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dev.launch import Child
from llmflow.schemas.outputs import Output
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event

pytestmark = pytest.mark.integration


def _send(producer: EventProducer, topic: str, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(count)]
    for n, event_id in enumerate(ids):
        producer.send(
            topic, text_event(f"{prefix} {n}", key=f"C-{1001 + n % 24}", event_id=event_id)
        )
    producer.flush()
    return ids


def test_second_worker_takes_partitions_without_duplicates(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    spec = yaml.safe_load(topology_copy("support_triage").read_text())
    topic = spec["input_topic"]
    env = worker_env(modelsim("--latency-ms", "50"))
    results: list[Output] = []

    with (
        EventProducer(kafka_bootstrap) as producer,
        ResultConsumer(kafka_bootstrap, [spec["output_topic"]]) as consumer,
    ):

        def collect(idle_timeout_s: float, limit: int | None = None) -> None:
            for output in consumer.results(idle_timeout_s, limit):
                assert isinstance(output, Output)
                results.append(output)

        # One worker answers a first batch; its latest offsets are not committed yet
        # when the second worker joins, so the group's rebalance redelivers them.
        first = workers([topology_copy("support_triage")], env)
        sent = _send(producer, topic, "a", 100)
        collect(60, limit=100)
        assert {o.worker for o in results} == {
            f"{o.worker.split(':')[0]}:{first.pid}" for o in results
        }

        second = workers([topology_copy("support_triage")], env)
        deadline = time.monotonic() + 90
        round_ = 0
        while len({o.worker for o in results}) < 2 and time.monotonic() < deadline:
            sent += _send(producer, topic, f"b{round_}", 20)
            round_ += 1
            collect(1)
        assert len({o.worker for o in results}) == 2, f"{first.log_tail()}\n{second.log_tail()}"

        tail = _send(producer, topic, "c", 200)
        sent += tail
        collect(30, limit=len(sent) - len(results))
        collect(3)  # past the expected count: a duplicate would arrive now

    assert first.alive() and second.alive()
    counts = Counter(o.event_id for o in results)
    assert sorted(counts) == sorted(sent)
    assert [i for i, c in counts.items() if c > 1] == []
    # Once the group settled, each partition belongs to one worker and both own some.
    owners: dict[int, set[str]] = {}
    for output in (o for o in results if o.event_id.startswith("c-")):
        owners.setdefault(output.source_partition, set()).add(output.worker)
    assert all(len(by) == 1 for by in owners.values()), owners
    assert {w.split(":")[-1] for by in owners.values() for w in by} == {
        str(first.pid),
        str(second.pid),
    }
