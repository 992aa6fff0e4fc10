"""`llmflow worker --processes 2`: two children in one consumer group under a supervisor,
one of them killed while busy and started again with nothing lost, one `/metrics` for both,
and a stop (or a kill) of the supervisor that ends its children too."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from dev.bench.harness import child_pids, process_gone
from dev.launch import Child
from llmflow.schemas.outputs import Output
from llmflow.services.broker.local import free_port
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event
from tests.integration.helpers import keep_calls, scrape, total

pytestmark = pytest.mark.integration

DRAIN_TIMEOUT_S = 20


def _produce(bootstrap: str, topic: str, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(count)]
    with EventProducer(bootstrap) as producer:
        for n, event_id in enumerate(ids):
            key = f"C-{1001 + n % 24}"
            producer.send(topic, text_event(f"{prefix} ticket {n}", key=key, event_id=event_id))
    return ids


def _until(condition: Callable[[], bool], what: str, supervisor: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert supervisor.alive(), supervisor.log_tail()
        assert time.monotonic() < deadline, (
            f"{what} after {timeout_s:.0f} s\n{supervisor.log_tail()}"
        )
        time.sleep(0.5)


def _both_assigned(port: int) -> Callable[[], bool]:
    """Each child holds input partitions (its quota share is its share of them)."""

    def check() -> bool:
        try:
            samples = scrape(port)
        except OSError:
            return False
        shares = [total(samples, "llmflow_quota_share_ratio", process=p) for p in ("0", "1")]
        return all(share > 0 for share in shares)

    return check


def test_two_processes_share_the_work_survive_a_kill_and_stop_together(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    path = topology_copy("support_triage")
    spec = keep_calls(path, "classify")
    port = free_port()
    env = worker_env(modelsim("--latency-ms", "300"))
    env |= {
        "LLMFLOW_METRICS_PORT": str(port),
        "LLMFLOW_CONCURRENCY": "10",  # per child: a backlog for several seconds
        "LLMFLOW_INSTANCE_ID": f"procs-{uuid.uuid4().hex[:6]}",  # children: <id>-0, <id>-1
        "LLMFLOW_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    }
    supervisor = workers([path], env, processes=2)
    _until(_both_assigned(port), "children not both assigned", supervisor, 120)
    children = child_pids(supervisor.pid)
    assert len(children) == 2, children

    sent = _produce(kafka_bootstrap, spec["input_topic"], "p", 400)
    topics = [spec["output_topic"], spec["dead_letter_topic"]]
    with ResultConsumer(kafka_bootstrap, topics) as consumer:
        before = list(consumer.results(idle_timeout_s=60, limit=100))
        victim = children[0]
        os.kill(victim, signal.SIGKILL)  # while it has events in flight
        after = list(consumer.results(idle_timeout_s=120, limit=len(sent) - len(before)))
        after += consumer.results(idle_timeout_s=3)

    results = before + after
    assert sorted(r.event_id or "" for r in results) == sorted(sent), supervisor.log_tail()
    assert all(isinstance(r, Output) for r in results)
    # Both children answered events before the kill: each got partitions.
    answered_by = {r.worker.rsplit(":", 1)[1] for r in before if isinstance(r, Output)}
    assert answered_by == {str(pid) for pid in children}
    # The victim was started again (one line saying so) and holds its partitions again.
    log = supervisor.log_tail(20_000)
    assert f"(pid {victim}) was killed by SIGKILL; restarting it in 1 s" in log, log
    _until(_both_assigned(port), "the restarted child not assigned", supervisor, 120)
    now = child_pids(supervisor.pid)
    assert len(now) == 2 and victim not in now and children[1] in now
    samples = scrape(port)
    assert total(samples, "llmflow_worker_processes") == 2
    assert total(samples, "llmflow_worker_restarts_total") == 1
    for process in ("0", "1"):
        assert total(samples, "llmflow_events_in_total", process=process) > 0
    assert {dict(labels).get("process") for _, labels in samples} >= {"0", "1"}

    stopped_at = time.monotonic()
    supervisor.process.send_signal(signal.SIGTERM)
    status = supervisor.process.wait(DRAIN_TIMEOUT_S + 10)
    took = time.monotonic() - stopped_at
    assert status == 0, supervisor.log_tail()
    assert took < DRAIN_TIMEOUT_S, took
    assert all(process_gone(pid) for pid in now)
    print(f"\n[processes test] stopped in {took:.1f} s")


def test_children_do_not_outlive_a_killed_supervisor(
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    path = topology_copy("support_triage")
    supervisor = workers([path], worker_env(modelsim()), processes=2)

    def started() -> bool:  # each child logs one line once its app is built
        return supervisor.log_tail(20_000).count("bootstrap: worker ") >= 2

    _until(started, "children not started", supervisor, 120)
    children = child_pids(supervisor.pid)
    assert len(children) == 2, children
    supervisor.kill()  # SIGKILL: the supervisor cleans nothing up
    deadline = time.monotonic() + 5
    while not all(process_gone(pid) for pid in children):
        assert time.monotonic() < deadline, f"children {children} outlived their supervisor"
        time.sleep(0.1)
