"""Outages and stops on a real broker: a model endpoint down for a while pauses the
topology (no dead letters; every event answered once it is back), and SIGTERM ends a worker
within its drain time even when its model calls hang, without losing what was in flight."""

from __future__ import annotations

import contextlib
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dev.launch import Child, start_modelsim
from llmflow.schemas.outputs import Output
from llmflow.services.broker.local import free_port
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event
from tests.integration.helpers import scrape, total

pytestmark = pytest.mark.integration

OUTAGE_S = 20.0
# Short retries, so that the outage is found out within seconds (the default burns 16).
QUICK_RETRIES = '{"max_attempts": 3, "base_delay_s": 0.1, "deadline_s": 10}'


def _produce(bootstrap: str, topic: str, prefix: str, count: int) -> list[str]:
    with EventProducer(bootstrap) as producer:
        for n in range(count):
            producer.send(
                topic, text_event(f"ticket {n}", key=f"C-{1001 + n % 30}", event_id=f"{prefix}-{n}")
            )
    return [f"{prefix}-{n}" for n in range(count)]


def test_a_model_outage_pauses_the_topology_and_dead_letters_nothing(
    kafka_bootstrap: str,
    run_dir: Path,
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    spec = yaml.safe_load((path := topology_copy("support_triage")).read_text())
    port, metrics_port = free_port(), free_port()
    sim = start_modelsim(port, run_dir / "logs", ["--latency-ms", "100"])
    env = {
        **worker_env(sim),
        "LLMFLOW_RETRY": QUICK_RETRIES,
        "LLMFLOW_OUTAGE_PROBE_S": "1",
        "LLMFLOW_METRICS_PORT": str(metrics_port),
        "LLMFLOW_CONCURRENCY": "10",
    }
    worker = workers([path], env)
    sent = _produce(kafka_bootstrap, spec["input_topic"], "o", 300)
    topics = [spec["output_topic"], spec["dead_letter_topic"]]
    with ResultConsumer(kafka_bootstrap, topics) as consumer:
        before = list(consumer.results(idle_timeout_s=60, limit=40))
        sim.kill()  # the endpoint goes away: connections are refused
        down_at = time.monotonic()
        paused = 0.0
        while time.monotonic() - down_at < OUTAGE_S:
            paused = total(
                scrape(metrics_port), "llmflow_topology_paused", topology="support_triage"
            )
            if paused == 1:
                break
            time.sleep(0.5)
        assert paused == 1, worker.log_tail()
        # Not ready while paused: a rollout waits, traffic stays where it is.
        status, text = _http(metrics_port, "/readyz")
        assert status == 503, text
        assert "paused, a model endpoint they need is down: support_triage" in text
        assert _http(metrics_port, "/healthz") == (200, "ok\n")  # alive all along
        during = list(
            consumer.results(idle_timeout_s=max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        )
        sim = start_modelsim(port, run_dir / "logs", ["--latency-ms", "100"])
        after = list(
            consumer.results(idle_timeout_s=60, limit=len(sent) - len(before) - len(during))
        )
        after += consumer.results(idle_timeout_s=2)
    sim.stop()
    results = before + during + after
    assert all(isinstance(r, Output) for r in results), [
        r for r in results if not isinstance(r, Output)
    ][:3]
    assert sorted(r.event_id or "" for r in results) == sorted(sent)
    log = worker.log_tail(200_000)
    assert "paused, model endpoint default is down" in log and "connection_refused" in log
    assert "resumed after" in log
    assert total(scrape(metrics_port), "llmflow_topology_paused", topology="support_triage") == 0
    assert worker.alive()
    assert _http(metrics_port, "/readyz") == (200, "ready\n")


def _http(port: int, path: str) -> tuple[int, str]:
    """Status and body of GET http://127.0.0.1:<port><path> (errors included)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_sigterm_ends_a_worker_within_its_drain_time_and_loses_nothing(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    spec = yaml.safe_load((path := topology_copy("support_triage")).read_text())
    hanging = modelsim("--rate-slow", "1", "--slow-ms", "600000")
    metrics_port = free_port()
    env = {**worker_env(hanging), "LLMFLOW_DRAIN_TIMEOUT_S": "5"}
    worker = workers([path], {**env, "LLMFLOW_METRICS_PORT": str(metrics_port)})
    sent = _produce(kafka_bootstrap, spec["input_topic"], "d", 20)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # the metrics server may not be up yet
            in_flight = scrape(metrics_port)
            if total(in_flight, "llmflow_in_flight_events", topology="support_triage") > 0:
                break
        time.sleep(0.5)
    else:
        pytest.fail(f"no event in flight: {worker.log_tail()}")
    stopped_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(timeout=30)
    took = time.monotonic() - stopped_at
    assert code == 75 and took < 5 + 10, (code, took, worker.log_tail())
    assert "without committing them" in worker.log_tail()
    # Nothing in flight was committed: a worker with an endpoint that answers gets it all.
    quick = modelsim()
    workers([path], {**worker_env(quick), "LLMFLOW_APP_ID": env["LLMFLOW_APP_ID"]})
    with ResultConsumer(
        kafka_bootstrap, [spec["output_topic"], spec["dead_letter_topic"]]
    ) as consumer:
        results = list(consumer.results(idle_timeout_s=60, limit=len(sent)))
    assert sorted(r.event_id or "" for r in results) == sorted(sent)
    assert all(isinstance(r, Output) for r in results)
