"""Adding a worker mid-stream: the group splits the partitions, every event is answered once."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dev.launch import Child
from llmflow.schemas.outputs import Output
from llmflow.services.broker.local import free_port
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event
from llmflow.services.sdk.consumer import Result
from tests.integration.helpers import wait_until_all_assigned

pytestmark = pytest.mark.integration


def _send(
    producer: EventProducer, topic: str, prefix: str, count: int, first_key: int = 0
) -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(count)]
    for n, event_id in enumerate(ids):
        key = f"C-{1001 + (first_key + n) % 24}"
        producer.send(topic, text_event(f"{prefix} {n}", key=key, event_id=event_id))
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


def test_a_worker_killed_and_restarted_takes_its_partitions_back_within_seconds(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    """Static membership: the restarted worker rejoins under its old id and gets its old
    partitions without a rebalance, so the other workers never stop."""
    spec = yaml.safe_load((path := topology_copy("support_triage")).read_text())
    # Six partitions for three workers: with four, faust may leave one worker without any.
    env = {**worker_env(modelsim("--latency-ms", "50")), "LLMFLOW_TOPIC_PARTITIONS": "6"}
    ports = [free_port() for _ in range(3)]

    def start(n: int) -> Child:
        own = {"LLMFLOW_INSTANCE_ID": f"w-{n}", "LLMFLOW_METRICS_PORT": str(ports[n])}
        return workers([path], {**env, **own})

    # The first worker leads the group (a restarted leader makes the group rebalance).
    group = [start(0)]
    wait_until_all_assigned(ports[:1])
    group += [start(n) for n in (1, 2)]
    wait_until_all_assigned(ports)
    sent: list[str] = []
    stop = threading.Event()

    def trickle() -> None:  # about 16 events a second, over every partition
        with EventProducer(kafka_bootstrap) as producer:
            while not stop.is_set():
                sent.extend(_send(producer, spec["input_topic"], f"s{len(sent)}", 4, len(sent)))
                time.sleep(0.25)

    feeder = threading.Thread(target=trickle)
    feeder.start()
    results: list[Result] = []
    with ResultConsumer(kafka_bootstrap, [spec["output_topic"]]) as consumer:
        try:
            results += consumer.results(idle_timeout_s=30, limit=100)
            victim = group[1]
            killed_at = time.time()
            victim.kill()
            restarted = start(1)  # the same instance id, at once
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                results += consumer.results(idle_timeout_s=1, limit=20)
        finally:
            stop.set()
            feeder.join()
        results += consumer.results(idle_timeout_s=30)
    outputs = [r for r in results if isinstance(r, Output)]
    assert sorted(o.event_id for o in outputs) == sorted(sent)  # nothing lost

    def produced(o: Output) -> float:
        return o.produced_at.timestamp()

    # The restarted worker took over exactly the partitions of the one killed.
    theirs = {o.source_partition for o in outputs if o.worker.endswith(f":{restarted.pid}")}
    others = {o.source_partition for o in outputs} - theirs
    assert theirs and others
    # The victim's partitions answer again within 15 s of the kill and restart.
    resumed = min(
        produced(o) for o in outputs if o.source_partition in theirs and produced(o) > killed_at
    )
    assert resumed - killed_at < 15, resumed - killed_at
    # The other workers' partitions never stop: no gap of more than 5 s around the kill.
    for partition in others:
        times = sorted(
            produced(o)
            for o in outputs
            if o.source_partition == partition and killed_at - 5 < produced(o) < killed_at + 25
        )
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert times and max(gaps) < 5, (partition, max(gaps))
    took = resumed - killed_at
    print(f"\n[restart test] the killed worker's partitions answered again after {took:.1f} s")
