"""Model calls on a real broker: faults, quotas, budgets, crashes and broken answers."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dev.launch import Child
from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.schemas.parked import Parked
from llmflow.services.broker.local import free_port
from llmflow.services.models.structured import parse_answer
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event
from llmflow.services.sdk.consumer import Result
from tests.integration.helpers import (
    changelog,
    keep_calls,
    scrape,
    simulator_log,
    total,
    wait_until_all_assigned,
)

pytestmark = pytest.mark.integration

WorkerFactory = Callable[..., Child]


def _produce(
    bootstrap: str, topic: str, prefix: str, count: int, tenant: str | None = None
) -> list[str]:
    ids = [f"{prefix}-{n}" for n in range(count)]
    with EventProducer(bootstrap) as producer:
        for n, event_id in enumerate(ids):
            text = f"{prefix} ticket {n}: the invoice total is wrong"
            key = f"C-{1001 + n % 24}"
            producer.send(topic, text_event(text, key=key, event_id=event_id, tenant=tenant))
    return ids


def _figures(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Print a run's figures past pytest's capture, for the CI log."""
    with capsys.disabled():
        print(text)


def _collect(bootstrap: str, topics: list[str], count: int, timeout_s: float = 60) -> list[Result]:
    with ResultConsumer(bootstrap, topics) as consumer:
        results = list(consumer.results(idle_timeout_s=timeout_s, limit=count))
        results += consumer.results(idle_timeout_s=2)  # a duplicate would show up here
    return results


def test_rate_limits_and_server_errors_are_retried_until_every_event_is_answered(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: WorkerFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = topology_copy("support_triage")
    # The three calls alone: 500 events = 1500 requests (no retrieval query to embed).
    spec = keep_calls(path, "classify", "summarize", "draft_reply")
    flags = ("--rate-429", "0.3", "--rate-500", "0.05", "--retry-after-s", "0.2", "--seed", "5")
    sim = modelsim(*flags, "--latency-ms", "20")
    port = free_port()
    worker = workers([path], {**worker_env(sim), "LLMFLOW_METRICS_PORT": str(port)})

    sent = _produce(kafka_bootstrap, spec["input_topic"], "r", 500)
    results = _collect(kafka_bootstrap, [spec["output_topic"], spec["dead_letter_topic"]], 500)

    assert sorted(r.event_id or "" for r in results) == sorted(sent), worker.log_tail()
    assert all(isinstance(r, Output) for r in results), [
        r for r in results if not isinstance(r, Output)
    ][:3]
    log = simulator_log(sim.extra["base_url"])
    statuses: defaultdict[int, int] = defaultdict(int)
    for entry in log:
        statuses[entry["status"]] += 1
    assert statuses[429] > 300 and statuses[500] > 30  # the faults really happened
    outputs = [r for r in results if isinstance(r, Output)]
    assert (
        sum(c.attempts for o in outputs for c in o.calls)
        == statuses[200] + statuses[429] + statuses[500]
    )

    metrics = scrape(port)
    assert total(metrics, "llmflow_events_in_total") == 500
    assert total(metrics, "llmflow_outputs_total") == 500
    assert total(metrics, "llmflow_dead_letters_total") == 0
    assert total(metrics, "llmflow_model_retries_total", reason="http_429") == statuses[429]
    assert total(metrics, "llmflow_model_retries_total", reason="http_500") == statuses[500]
    assert total(metrics, "llmflow_model_attempts_total", status="ok") == statuses[200] == 1500
    assert total(metrics, "llmflow_model_calls_total", status="ok") == 1500
    retried = statuses[429] + statuses[500]
    assert total(metrics, "llmflow_model_attempts_total") == 1500 + retried
    tokens_in = sum(o.totals.tokens_in for o in outputs)
    assert total(metrics, "llmflow_tokens_total", direction="in") == tokens_in
    cost = sum(o.totals.cost_usd for o in outputs)
    assert total(metrics, "llmflow_cost_usd_total") == pytest.approx(cost)
    assert total(metrics, "llmflow_model_call_seconds_count") == 1500
    # Consumer lag per input partition: there, and back to 0 once everything is committed.
    deadline = time.monotonic() + 30
    while True:
        lags = {
            dict(labels)["partition"]: value
            for (name, labels), value in scrape(port).items()
            if name == "llmflow_consumer_lag" and dict(labels)["topic"] == spec["input_topic"]
        }
        if (len(lags) == 4 and sum(lags.values()) == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lags == {str(p): 0 for p in range(4)}
    assert total(metrics, "llmflow_in_flight_events") == 0
    _figures(
        capsys,
        f"\n[fault test] 500 events, 1500 calls: {statuses[429]} answered 429, "
        f"{statuses[500]} answered 500, all retried; 500 outputs, 0 dead letters",
    )


def test_requests_per_minute_hold_across_two_workers(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: WorkerFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rpm = 240
    path = topology_copy("support_triage")
    spec = keep_calls(path, "summarize")  # one call per event: 300 events = 300 requests
    sim = modelsim("--latency-ms", "30")
    env = {
        **worker_env(sim),
        "LLMFLOW_QUOTAS": json.dumps({"gpt-4o-mini": {"rpm": rpm}}),
        "LLMFLOW_QUOTA_MAX_WORKERS": "2",
    }
    first, second = workers([path], env), workers([path], env)

    sent = _produce(kafka_bootstrap, spec["input_topic"], "q", 300)
    results = _collect(kafka_bootstrap, [spec["output_topic"], spec["dead_letter_topic"]], 300, 90)

    assert sorted(r.event_id or "" for r in results) == sorted(sent)
    assert all(isinstance(r, Output) for r in results)
    answered_by = {r.worker.rsplit(":", 1)[1] for r in results if isinstance(r, Output)}
    assert answered_by == {str(first.pid), str(second.pid)}, "both workers should answer"
    arrivals = sorted(e["received"] for e in simulator_log(sim.extra["base_url"]))
    assert len(arrivals) == 300
    assert arrivals[-1] - arrivals[0] > 60, "the run must span a whole minute to test the limit"
    busiest = max(
        sum(1 for t in arrivals[i:] if t < start + 60) for i, start in enumerate(arrivals)
    )
    assert busiest <= rpm
    assert busiest >= 0.8 * rpm, f"quota far from used: {busiest} in the busiest minute"
    span = arrivals[-1] - arrivals[0]
    _figures(
        capsys, f"\n[rpm test] limit {rpm}/min, busiest sliding minute {busiest}, {span:.0f} s run"
    )


def test_tenant_over_budget_is_parked_and_others_are_not(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: WorkerFactory,
) -> None:
    path = topology_copy("support_triage")
    # The three calls alone: their cost per event is what the budget below was sized for.
    spec = keep_calls(path, "classify", "summarize", "draft_reply")
    topics = [spec["output_topic"], spec["dead_letter_topic"], spec["parked_topic"]]
    sim = modelsim()
    budget = 0.0006  # about eight events' worth at gpt-4o-mini list prices
    env = {**worker_env(sim), "LLMFLOW_BUDGETS": json.dumps({"thrifty": {"usd": budget}})}
    ports = [free_port(), free_port()]
    first, second = (workers([path], {**env, "LLMFLOW_METRICS_PORT": str(p)}) for p in ports)
    # Both workers in one settled group before any event: this test is about budgets, and
    # a late joiner's rebalance in the middle of a batch is not what it measures.
    wait_until_all_assigned(ports)

    with ResultConsumer(kafka_bootstrap, topics) as consumer:
        spent = _produce(kafka_bootstrap, spec["input_topic"], "t1", 12, tenant="thrifty")
        spent += _produce(kafka_bootstrap, spec["input_topic"], "o1", 12, tenant="other")
        early = list(consumer.results(idle_timeout_s=60, limit=24))
        time.sleep(2)  # the spend of either worker reaches the other through the changelog
        late_ids = _produce(kafka_bootstrap, spec["input_topic"], "t2", 12, tenant="thrifty")
        late_ids += _produce(kafka_bootstrap, spec["input_topic"], "o2", 12, tenant="other")
        late = list(consumer.results(idle_timeout_s=60, limit=24))

    assert first.alive() and second.alive()
    assert sorted(r.event_id or "" for r in early) == sorted(spent)
    thrifty_cost = sum(
        r.totals.cost_usd for r in early if isinstance(r, Output) and r.tenant == "thrifty"
    )
    assert thrifty_cost >= budget, "the first batch must use the budget up"
    local = {str(w.pid): 0.0 for w in (first, second)}
    for r in early:
        if isinstance(r, Output) and r.tenant == "thrifty":
            local[r.worker.rsplit(":", 1)[1]] += r.totals.cost_usd
    # One worker's own spend stays under the budget: it can only park the second batch
    # by counting the other worker's spend, which reaches it through the changelog.
    assert min(local.values()) < budget, local
    assert sorted(r.event_id or "" for r in late) == sorted(late_ids)
    parked = [r for r in late if isinstance(r, Parked)]
    assert sorted(p.event_id for p in parked) == sorted(i for i in late_ids if i.startswith("t2"))
    for item in parked:
        assert item.reason == "budget" and item.tenant == "thrifty"
        assert item.spent_usd >= item.budget_usd == budget
        assert "budget" in item.message
    others = [r for r in early + late if r.event_id and r.event_id.startswith("o")]
    assert len(others) == 24 and all(isinstance(r, Output) for r in others)


def test_killed_worker_loses_nothing_and_pays_no_answer_twice(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: WorkerFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = topology_copy("support_triage")
    spec = yaml.safe_load(path.read_text())
    sim = modelsim("--latency-ms", "300", "--jitter-ms", "200")
    env = worker_env(sim)
    port = free_port()
    victim = workers([path], env)
    sent = _produce(kafka_bootstrap, spec["input_topic"], "k", 400)

    with ResultConsumer(
        kafka_bootstrap, [spec["output_topic"], spec["dead_letter_topic"]]
    ) as consumer:
        before = list(consumer.results(idle_timeout_s=60, limit=120))
        killed_at = time.time()
        victim.kill()  # SIGKILL: no shutdown, no commit, in-flight calls lost
        survivor = workers([path], {**env, "LLMFLOW_METRICS_PORT": str(port)})
        # The survivor waits out the victim's session (LLMFLOW_SESSION_TIMEOUT_S) first.
        after = list(consumer.results(idle_timeout_s=120, limit=len(sent) - len(before)))
        after += consumer.results(idle_timeout_s=3)
        duplicates = consumer.duplicates

    results = before + after
    assert sorted(r.event_id or "" for r in results) == sorted(sent), survivor.log_tail()
    assert all(isinstance(r, Output) for r in results), [
        r for r in results if not isinstance(r, Output)
    ]

    paid_at: dict[str, list[float]] = defaultdict(list)
    for entry in simulator_log(sim.extra["base_url"]):
        if entry["status"] == 200:
            paid_at[entry["call_id"]].append(entry["t"])
    # A call answered well before the kill was stored; only calls in flight may repeat.
    repaid = {c: ts for c, ts in paid_at.items() if len(ts) > 1}
    settled_before_kill = {c: ts for c, ts in repaid.items() if min(ts) < killed_at - 0.5}
    assert settled_before_kill == {}, (killed_at, settled_before_kill)
    reused = total(scrape(port), "llmflow_model_calls_total", status="reused")
    assert reused > 0, "the restarted worker should have reused stored answers"
    # draft_reply needs classify and summarize: an event killed between the two steps goes
    # on from the answers paid for.
    resumed = [
        r
        for r in after
        if isinstance(r, Output)
        and r.call("classify").reused
        and r.call("summarize").reused
        and not r.call("draft_reply").reused
    ]
    assert resumed, "no event was resumed between its steps"

    # The tables' layout: one answered record per partition, each write holding every
    # offset not yet committed (no record per mark, no tombstone per mark) ...
    tables = f"{env['LLMFLOW_APP_ID']}-{spec['name']}"
    answered = changelog(kafka_bootstrap, f"{tables}-answered-changelog")
    assert answered and all(key.isdigit() and int(key) == p for p, key, _ in answered)
    assert len(answered) <= len(sent), len(answered)
    assert all(
        isinstance(ranges, list) and all(first <= last for first, last in ranges)
        for _, _, ranges in answered
    )
    # ... and one paid record per event ("partition:offset"), holding its answers by call
    # id, instead of one per call (three calls and the retrieval query's embedding here).
    paid = changelog(kafka_bootstrap, f"{tables}-paid-changelog")
    events = {key for _, key, _ in paid}
    assert all(re.fullmatch(rf"{p}:\d+", key) for p, key, _ in paid)
    assert len(events) <= len(sent) < len(paid_at)
    for _, _, answers in paid:
        assert answers is None or all(a["call_id"] == c for c, a in answers.items())
    _figures(
        capsys,
        f"\n[kill test] events {len(sent)}, raw duplicate results {duplicates}, "
        f"calls paid twice {len(repaid)} (in flight at the kill), answers reused {reused:.0f}, "
        f"events resumed after their first steps {len(resumed)}",
    )


def test_answers_that_break_their_schema_are_repaired_or_dead_lettered(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: WorkerFactory,
) -> None:
    path = topology_copy("support_triage")
    spec = keep_calls(path, "classify")
    sim = modelsim("--rate-invalid", "0.5", "--seed", "3")
    workers([path], worker_env(sim))

    sent = _produce(kafka_bootstrap, spec["input_topic"], "s", 120)
    results = _collect(kafka_bootstrap, [spec["output_topic"], spec["dead_letter_topic"]], 120)

    assert sorted(r.event_id or "" for r in results) == sorted(sent)
    outputs = [r for r in results if isinstance(r, Output)]
    dead = [r for r in results if isinstance(r, DeadLetter)]
    repaired = [o for o in outputs if o.call("classify").repaired]
    assert repaired and dead, (len(repaired), len(dead))
    schema = spec["calls"][0]["output_schema"]
    for output in outputs:
        parse_answer(json.dumps(output.call("classify").answer), schema)  # valid, repaired or not
    for item in repaired:
        assert item.call("classify").attempts == 2
    for letter in dead:
        assert (letter.stage, letter.error_kind) == ("model", "schema_violation")
        assert "$" in letter.message and "broke its schema twice" in letter.message
    invalid = sum(1 for e in simulator_log(sim.extra["base_url"]) if e["invalid"])
    assert invalid == len(repaired) + 2 * len(dead)
