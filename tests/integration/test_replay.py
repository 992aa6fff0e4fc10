"""Trying a candidate on real traffic, on a real broker with the model simulator: `replay`
writes one shadow result per event of its range and nothing to the live topics, goes on
where it was when run again, and `compare` reports what the simulator's answers imply."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaConsumer, TopicPartition

from dev.launch import Child, spawn
from dev.probes import scrape, simulator_log, total
from dev.topologies import candidate_copy
from llmflow.schemas.outputs import Output
from llmflow.services.broker.local import free_port
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event
from llmflow.services.sdk.consumer import parse_result
from llmflow.services.shadow.replay import shadow_topic
from llmflow.services.worker.bootstrap import model_client
from llmflow.services.worker.settings import Settings
from llmflow.services.worker.shadow import SHADOW_HEADER, sampled
from llmflow.topologies.loader import load_topology
from llmflow.topologies.prompts import render
from llmflow.topologies.spec import Topology

pytestmark = pytest.mark.integration

EVENTS = 24


def _llmflow(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmflow.services.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=300,
        check=False,
    )


def _records(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` now (none when it does not exist)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        found: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                found += records
        return found
    finally:
        consumer.close()


def _expected_classify(base_url: str, ticket: Any, live: Topology, cand: Topology) -> list[Any]:
    """The classify answers of both versions for one event, asked of the simulator directly
    (its events have no customer record: `org` is empty)."""
    context = {"event": ticket.model_dump(mode="json"), "org": {}, "record": {}, "docs": []}

    async def ask() -> list[Any]:
        models = model_client(Settings(openai_base_url=base_url).models_config())
        try:
            answers = []
            for n, topology in enumerate((live, cand)):
                call = next(c for c in topology.calls if c.name == "classify")
                system = render(call.prompt.system or "", context)
                user = render(call.prompt.user, context)
                result = await models.run(
                    call, call_id=f"expect-{n}-{ticket.id}", system=system, user=user, image_urls=[]
                )
                answers.append(result.answer)
            return answers
        finally:
            await models.close()

    return asyncio.run(ask())


def test_replay_writes_one_shadow_result_per_event_and_compare_reports_the_change(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    path = topology_copy("support_triage")
    sim = modelsim()
    env = worker_env(sim)
    workers([path], env)
    live = load_topology(path)
    tickets = [
        text_event(f"ticket {n}: invoice {n} charged twice", key=f"Z-{n}", event_id=f"rp-{n}")
        for n in range(EVENTS)
    ]
    with EventProducer(kafka_bootstrap) as producer:
        for ticket in tickets:
            producer.send(live.input_topic, ticket)
        producer.send_raw(live.input_topic, b"{not json", key="Z-bad")
    live_topics = [live.output_topic, live.dead_letter_topic]
    with ResultConsumer(kafka_bootstrap, live_topics) as consumer:
        assert len(list(consumer.results(idle_timeout_s=60, limit=EVENTS + 1))) == EVENTS + 1
    written = [live.output_topic, live.dead_letter_topic, live.parked]
    written += [route.topic for route in live.routes]
    before = {topic: len(_records(kafka_bootstrap, topic)) for topic in written}

    # The candidate: classify's prompt is new (classify-4), the rest as live.
    candidate = candidate_copy(path, run_dir / "candidate")
    cand, cand_file = candidate.topology, candidate.path
    inputs = _records(kafka_bootstrap, live.input_topic)
    # A range that leaves out each partition's first record: FIRST-LAST by partition.
    firsts = {
        p: min(r.offset for r in inputs if r.partition == p) for p in {r.partition for r in inputs}
    }
    wanted = {(r.partition, r.offset) for r in inputs if r.offset > firsts[r.partition]}
    ranges = ",".join(f"{p}:{first + 1}-" for p, first in sorted(firsts.items()))
    done = _llmflow(
        "replay", "--topology", str(cand_file), "--offsets", ranges, env=env, cwd=run_dir
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["done"] == summary["total"] == len(wanted), summary
    assert "events (100%)" in done.stderr

    shadow = _records(kafka_bootstrap, shadow_topic(cand))
    positions = Counter(
        (r.source_partition, r.source_offset) for r in (parse_result(x.value) for x in shadow)
    )
    assert set(positions) == wanted and set(positions.values()) == {1}, positions
    for record in shadow:
        assert dict(record.headers)[SHADOW_HEADER] == cand.version.encode()
        assert parse_result(record.value).topology_version == cand.version
    assert summary["dead_letters"] == sum(
        1 for r in inputs if r.value == b"{not json" and (r.partition, r.offset) in wanted
    )
    # Nothing written to the live topics (their records, routes included, are as they were).
    assert {topic: len(_records(kafka_bootstrap, topic)) for topic in written} == before

    # Run again: the group committed the whole range; nothing is replayed or paid twice.
    again = _llmflow(
        "replay", "--topology", str(cand_file), "--offsets", ranges, env=env, cwd=run_dir
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    assert (rerun["resumed"], rerun["outputs"], rerun["calls_paid"]) == (len(wanted), 0, 0)
    assert len(_records(kafka_bootstrap, shadow_topic(cand))) == len(wanted)

    # Compare: the unchanged prompt agrees everywhere, classify as the simulator implies.
    out = run_dir / "report"
    rubric = run_dir / "rubric.md"
    rubric.write_text('Prefer the answer that triages better. Answer as {"live_score": 1, ...}.')
    judged = ["--judge-model", "gpt-4o-mini", "--rubric", str(rubric), "--judge-limit", "5"]
    compared = _llmflow(
        "compare", "--topology", str(cand_file), "--out", str(out), *judged, env=env, cwd=run_dir
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    # The judge scored 5 pairs of differing answers through the model client, priced.
    judge = report["judge"]
    assert (judge["pairs"], judge["failed"]) == (5, 0) and judge["cost_usd"] > 0, judge
    scored = sum(c["pairs"] for c in judge["calls"].values())
    assert scored == 5 and "## Judge (gpt-4o-mini" in (out / "report.md").read_text()
    outputs = [parse_result(x.value) for x in shadow]
    replayed = {o.event_id for o in outputs if isinstance(o, Output)}
    assert report["events"]["compared"] == len(wanted)
    assert report["calls"]["summarize"]["exact_match"] == 1.0
    assert report["calls"]["summarize"]["similarity_mean"] == 1.0
    pairs = [
        _expected_classify(sim.extra["base_url"], t, live, cand)
        for t in tickets
        if t.id in replayed
    ]
    for field in ("category", "priority", "sentiment"):
        expected = sum(a[field] == b[field] for a, b in pairs) / len(pairs)
        assert report["calls"]["classify"]["field_agreement"][field] == pytest.approx(expected)
    assert sum(
        n
        for row in report["calls"]["classify"]["confusion"]["priority"].values()
        for n in row.values()
    ) == len(pairs)
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## classify" in (out / "report.md").read_text()


def test_a_prompt_version_alone_changes_no_answer_in_the_report(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    path = topology_copy("support_triage")
    sim = modelsim()
    env = worker_env(sim)
    workers([path], env)
    live = load_topology(path)
    with EventProducer(kafka_bootstrap) as producer:
        for n in range(12):
            ticket = text_event(
                f"ticket {n}: cannot log in", key=f"C-100{n % 3 + 1}", event_id=f"pv-{n}"
            )
            producer.send(live.input_topic, ticket)
    with ResultConsumer(kafka_bootstrap, [live.output_topic]) as consumer:
        assert len(list(consumer.results(idle_timeout_s=60, limit=12))) == 12
    # Live's own prompts under a new topology and classify prompt version: new call ids
    # (paid again), the same requests, so the same answers.
    classify = next(c for c in live.calls if c.name == "classify")
    prompt = {**classify.prompt.model_dump(), "version": "classify-3b"}
    cand = candidate_copy(
        path, run_dir / "candidate", path, version="2.0.1", classify={"prompt": prompt}
    )
    done = _llmflow("replay", "--topology", str(cand.path), "--offsets", "0-", env=env, cwd=run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["outputs"] == 12 and summary["calls_paid"] > 0, summary
    out = run_dir / "report"
    compared = _llmflow(
        "compare", "--topology", str(cand.path), "--out", str(out), env=env, cwd=run_dir
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["head"]["live_version"] == live.version
    assert report["head"]["shadow_version"] == "2.0.1"
    assert report["events"]["compared"] == 12
    for name, call in report["calls"].items():
        assert call["exact_match"] == 1.0, (name, call)
    assert set(report["calls"]["classify"]["field_agreement"].values()) == {1.0}
    assert report["changed_most"] == []


def test_a_killed_replay_goes_on_where_it_was_and_pays_no_answer_twice(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No live worker: a replay reads the live input topic, whatever answered it.
    path = topology_copy("support_triage")
    live = load_topology(path)
    sim = modelsim("--latency-ms", "300", "--jitter-ms", "200")
    env = worker_env(sim)
    events = 120
    with EventProducer(kafka_bootstrap) as producer:
        for n in range(events):
            ticket = text_event(
                f"ticket {n}: app crashes", key=f"C-100{n % 3 + 1}", event_id=f"k-{n}"
            )
            producer.send(live.input_topic, ticket)
    candidate = candidate_copy(path, run_dir / "candidate")
    topic = shadow_topic(candidate.topology)
    args = ["replay", "--topology", str(candidate.path), "--offsets", "0-", "--concurrency", "20"]
    victim = spawn(
        "replay", args, run_dir / "logs", {**env, "LLMFLOW_DATA_DIR": str(run_dir / "r")}
    )
    deadline = time.monotonic() + 120
    while len(_records(kafka_bootstrap, topic)) < 30:
        assert victim.alive() and time.monotonic() < deadline, victim.log_tail()
        time.sleep(0.2)
    killed_at = time.time()
    victim.kill()  # SIGKILL: no commit, calls in flight lost
    victim.process.wait(timeout=10)

    done = _llmflow(*args, env=env, cwd=run_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["done"] == events and summary["resumed"] >= 30, summary
    assert summary["calls_reused"] > 0, "answers paid before the kill should be reused"

    shadow = [parse_result(r.value) for r in _records(kafka_bootstrap, topic)]
    positions = Counter((r.source_partition, r.source_offset) for r in shadow)
    assert len(positions) == events
    duplicates = sum(positions.values()) - events
    assert duplicates <= 20, positions  # only events in flight at the kill
    assert all(isinstance(r, Output) for r in shadow)

    paid_at: dict[str, list[float]] = defaultdict(list)
    for entry in simulator_log(sim.extra["base_url"]):
        if entry["status"] == 200:
            paid_at[entry["call_id"]].append(entry["t"])
    repaid = {c: ts for c, ts in paid_at.items() if len(ts) > 1}
    settled_before_kill = {c: ts for c, ts in repaid.items() if min(ts) < killed_at - 0.5}
    assert settled_before_kill == {}, (killed_at, settled_before_kill)
    with capsys.disabled():
        print(
            f"\n[replay kill test] events {events}, resumed {summary['resumed']}, duplicate "
            f"shadow results {duplicates}, calls paid twice {len(repaid)} (in flight at the "
            f"kill), answers reused {summary['calls_reused']}"
        )


def _wait_for(bootstrap: str, topic: str, count: int, timeout_s: float = 60) -> list[Any]:
    """The records of `topic` once it has `count` of them (or what it has at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while len(found := _records(bootstrap, topic)) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def _with_shadow(path: Path, run_dir: Path, **shadow: object) -> Path:
    """The topology copy at `path` with a shadow: the shipped candidate on its topics."""
    candidate = candidate_copy(path, run_dir / "candidates")
    spec = yaml.safe_load(path.read_text())
    relative = candidate.path.relative_to(path.parent)
    spec["shadow"] = {"topology": str(relative), **shadow}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_the_live_worker_shadows_a_sampled_share_into_the_shadow_topic_only(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    path = _with_shadow(topology_copy("support_triage"), run_dir, share=0.5, max_in_flight=100)
    live = load_topology(path)
    assert live.candidate is not None
    sim = modelsim()
    port = free_port()
    workers([path], {**worker_env(sim), "LLMFLOW_METRICS_PORT": str(port)})
    events = [
        text_event(f"ticket {n}: refund please", key=f"C-100{n % 3 + 1}", event_id=f"sh-{n}")
        for n in range(40)
    ]
    with EventProducer(kafka_bootstrap) as producer:
        for event in events:
            producer.send(live.input_topic, event)
    with ResultConsumer(kafka_bootstrap, [live.output_topic]) as consumer:
        outputs = list(consumer.results(idle_timeout_s=60, limit=len(events)))
    assert {o.event_id for o in outputs} == {e.id for e in events}
    assert {o.topology_version for o in outputs} == {live.version}

    inputs = _records(kafka_bootstrap, live.input_topic)
    picked = {(r.partition, r.offset) for r in inputs if sampled(r.value, 0.5)}
    assert 5 <= len(picked) <= 35  # about half of 40
    # Shadows run on their own: they may still be answering when the live outputs are in.
    shadow = _wait_for(kafka_bootstrap, live.candidate.shadow_output_topic, len(picked))
    results = [parse_result(r.value) for r in shadow]
    assert {(r.source_partition, r.source_offset) for r in results} == picked
    assert len(results) == len(picked)
    assert {r.topology_version for r in results} == {live.candidate.version}
    assert all(isinstance(r, Output) for r in results)
    assert {dict(r.headers)[SHADOW_HEADER] for r in shadow} == {live.candidate.version.encode()}
    samples = scrape(port)
    shadowed = total(samples, "llmflow_shadow_events_total", outcome="output")
    assert shadowed == len(picked)
    assert total(samples, "llmflow_shadow_cost_usd_total") > 0


def test_a_shadow_stops_at_its_budget_and_the_live_version_goes_on(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    # One shadowed event costs about 0.00014 USD here: the budget lasts a few events.
    path = _with_shadow(
        topology_copy("support_triage"), run_dir, share=1.0, budget_usd=0.0005, max_in_flight=2
    )
    live = load_topology(path)
    assert live.candidate is not None
    sim = modelsim()
    port = free_port()
    env = {**worker_env(sim), "LLMFLOW_METRICS_PORT": str(port), "LLMFLOW_CONCURRENCY": "2"}
    workers([path], env)
    with EventProducer(kafka_bootstrap) as producer:
        for n in range(30):
            producer.send(
                live.input_topic, text_event(f"ticket {n}", key="C-1001", event_id=f"b-{n}")
            )
    with ResultConsumer(kafka_bootstrap, [live.output_topic]) as consumer:
        assert len(list(consumer.results(idle_timeout_s=60, limit=30))) == 30
    deadline = time.monotonic() + 60
    while True:  # until every event is shadowed or counted as not
        samples = scrape(port)
        counted = total(samples, "llmflow_shadow_events_total")
        if counted == 30 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    shadow = [
        parse_result(r.value) for r in _records(kafka_bootstrap, live.candidate.shadow_output_topic)
    ]
    over = total(samples, "llmflow_shadow_events_total", outcome="over_budget")
    busy = total(samples, "llmflow_shadow_events_total", outcome="busy")
    assert 1 <= len(shadow) < 30 and over >= 1, (len(shadow), over, busy)
    assert over + busy == 30 - len(shadow), (len(shadow), over, busy)
    spent = sum(r.totals.cost_usd for r in shadow if isinstance(r, Output))
    # Spend stops within what was in flight when the budget ran out (2 shadows at a time).
    assert (
        0.0005
        <= spent
        < 0.0005 + 3 * max(r.totals.cost_usd for r in shadow if isinstance(r, Output))
    )


def test_a_replay_stops_at_its_budget_and_goes_on_when_run_again(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
) -> None:
    path = topology_copy("support_triage")
    live = load_topology(path)
    env = worker_env(modelsim())
    with EventProducer(kafka_bootstrap) as producer:
        for n in range(40):
            producer.send(
                live.input_topic, text_event(f"ticket {n}", key="C-1001", event_id=f"m-{n}")
            )
    candidate = candidate_copy(path, run_dir / "candidate")
    args = ["replay", "--topology", str(candidate.path), "--offsets", "0-", "--concurrency", "2"]
    # About 0.00015 USD an event: the cap lasts a few events.
    capped = _llmflow(*args, "--max-usd", "0.0006", env=env, cwd=run_dir)
    assert capped.returncode == 3, capped.stderr[-3000:]
    assert "budget of $0.0006 is spent" in capped.stderr
    first = json.loads(capped.stdout.strip().splitlines()[-1])
    assert 4 <= first["outputs"] < 40 and first["cost_usd"] >= 0.0006, first
    # Within what was in flight when the cap was reached (2 events at a time).
    assert first["cost_usd"] < 0.0006 + 3 * first["cost_usd"] / first["outputs"], first

    rest = _llmflow(*args, env=env, cwd=run_dir)
    assert rest.returncode == 0, rest.stderr[-3000:]
    second = json.loads(rest.stdout.strip().splitlines()[-1])
    assert second["done"] == 40 and second["resumed"] == first["outputs"], (first, second)
    shadow = [
        parse_result(r.value) for r in _records(kafka_bootstrap, shadow_topic(candidate.topology))
    ]
    assert sorted(r.event_id or "" for r in shadow) == sorted(f"m-{n}" for n in range(40))
