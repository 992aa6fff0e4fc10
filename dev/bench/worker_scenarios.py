"""Worker benchmarks: real `llmflow worker` processes on a real broker against the SIMULATOR.

    python -m dev.bench.worker_scenarios [--quick] [--scenarios a,b] [--run-dir DIR]

Starts one local Kafka (unless KAFKA_BOOTSTRAP_SERVERS is set) and runs, each with its own
topics and consumer group:

1. concurrency - completed calls/s at 50 and 200 calls in flight (1 and 3 calls per event)
   against a 200 +/- 20 ms model, as a share of C / 0.2 s; CPU per 1000 calls.
2. overhead    - worker events/s / the lean hand-written consumer's (`dev.bench.lean`: the
   same Kafka and HTTP work per event, none of the features) at C=200, 1 call per event, on
   an instant model and on a 200 ms one; the one-event-at-a-time worker as the floor.
3. latency     - end-to-end p50/p95/p99 at 50% and 90% of the throughput of (1).
4. scaling     - 1, 2 and 4 workers in one group: events/s and ratio to one worker.
5. memory      - peak resident memory (VmHWM) of the worker at C=200, taken during (1).
6. graph       - a graph of 4 calls (one, then two at once, then one) at C=20: each event's
   time in the worker over the sum of the latencies on its critical path (target <= 1.1).
7. processes   - events/s of `llmflow worker --processes 2` over `--processes 1` on an
   instant model, 1 call/event (target >= 1.7); a supervisor's CPU is its process tree's.

Rates come from the outputs' own timestamps over the middle of each run (the first and last
15% of its span are dropped), so start-up and drain do not count. Every ratio carries the
model simulator's cores in the runs behind it (`simulator_cores`): near a full core the
simulator, not the system under test, sets the rate, and the report marks the ratio so.
Where a target is missed, a separate pass profiles the worker with py-spy and the result
says what bounds it. Every scenario returns a JSON-able dict whose `ratios` list holds
entries {name, value, baseline, ratio, target, unit, simulator_cores}; the command prints
them as one table and writes everything to <run-dir>/worker_scenarios.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dev.bench.harness import (
    BenchError,
    CpuSampler,
    OffsetProbe,
    OutputRow,
    Steady,
    TopologyCopy,
    WorkerGroup,
    bound_verdict,
    create_topics,
    encode_events,
    machine,
    output_row,
    partitions_of,
    percentile,
    produce,
    publish_org_samples,
    read_topic,
    record_profile,
    simulator,
    start_lean,
    start_workers,
    steady_rate,
    summarise_profile,
    ticket,
    topology_copy,
    wait_settled,
)
from dev.bench.report import simulator_limited, simulator_text
from dev.launch import Child
from dev.topologies import GRAPH_CALLS, as_graph, critical_path_ms
from llmflow.services.broker.local import LocalKafka

log = logging.getLogger(__name__)

LATENCY_MS = 200.0
JITTER_MS = 20.0
MODEL_LATENCY_S = LATENCY_MS / 1000
PARTITIONS = 4
SCALING_PARTITIONS = 8
TRIM = 0.15
ONE_CALL = ("summarize",)  # the one call kept when a run wants 1 call per event
FAN_OUT = ("classify", "summarize", "draft_reply")  # kept, made independent, for 3 per event
CONCURRENCY_TARGETS = {50: 0.90, 200: 0.80}
OVERHEAD_TARGETS = {0.0: 0.5, LATENCY_MS: 0.9}
"""Worker / lean consumer, by the model's latency in ms: on an instant model the worker's
CPU per event is all there is; at 200 ms the model's wait should hide most of it."""
OVERHEAD_CONCURRENCY = 200
SCENARIOS = ("concurrency", "overhead", "latency", "scaling", "memory", "graph", "processes")


@dataclass(frozen=True)
class Plan:
    """How long things run: the full plan aims at ~6 minutes, the quick one at under 2."""

    run_s: float
    """Length a backlog is sized for, at the run's ideal rate."""
    cap_factor: float
    """A run is cut `run_s * cap_factor` after its first output (when below the ideal)."""
    overhead_worker_events: int
    """Worker backlog on the instant model (at 200 ms both sides get C / 0.2 s * run_s)."""
    lean_events: int
    """Lean consumer backlog on the instant model, where it is several times the faster."""
    naive_events: int
    latency_phase_s: float
    latency_warmup_events: int
    scaling_workers: tuple[int, ...]
    profile_s: float
    profiles: bool


FULL = Plan(
    run_s=18.0,
    cap_factor=1.6,
    overhead_worker_events=8000,
    lean_events=60_000,
    naive_events=60,
    latency_phase_s=10.0,
    latency_warmup_events=400,
    scaling_workers=(1, 2, 4),
    profile_s=10.0,
    profiles=True,
)
QUICK = Plan(
    run_s=3.0,
    cap_factor=1.5,
    overhead_worker_events=1800,
    lean_events=10_000,
    naive_events=12,
    latency_phase_s=2.5,
    latency_warmup_events=150,
    scaling_workers=(1, 2, 4),
    profile_s=3.0,
    profiles=False,
)


@dataclass
class Bench:
    """What every scenario shares: the broker, the run folder, the plan, earlier runs."""

    bootstrap: str
    run_dir: Path
    plan: Plan
    broker_pid: int | None = None
    runs: dict[str, RunResult] = field(default_factory=dict)
    """Runs other scenarios reuse, by key such as `c200-1call`."""

    orgdata_published: bool = False
    """Whether the sample org data is on the broker (`publish_orgdata`)."""

    async def publish_orgdata(self, sim: Child) -> None:
        """Publish the sample org data once per run, before the first worker starts: every
        worker reads the tables from their topics when it starts."""
        if self.orgdata_published:
            return
        began = time.monotonic()
        reports = await asyncio.to_thread(publish_org_samples, self.bootstrap, sim)
        self.orgdata_published = True
        progress(f"org data published in {time.monotonic() - began:.1f} s:")
        for report in reports:
            progress(f"  {report}")

    def watch_common(self, sampler: CpuSampler, sim: Child | None) -> None:
        if sim is not None:
            sampler.watch("simulator", sim.pid)
        if self.broker_pid is not None:
            sampler.watch("broker", self.broker_pid)
        sampler.watch("harness", os.getpid())


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def num(value: float | None, digits: int = 3) -> float | None:
    """Rounded for JSON; NaN and infinities become null."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def ratio_entry(
    name: str,
    value: float,
    baseline: float,
    target: float | None,
    unit: str,
    better: str = "higher",
    *,
    simulator_cores: dict[str, float | None],
) -> dict[str, Any]:
    """One row of a scenario's `ratios`: value / baseline, against a target (or None);
    `better` says which way the ratio improves (a target is met at or beyond it).
    `simulator_cores`: the simulator's cores during each run behind the ratio, by run."""
    share = value / baseline if baseline and math.isfinite(baseline) else math.nan
    entry = {
        "name": name,
        "value": num(value),
        "baseline": num(baseline),
        "ratio": num(share, 4),
        "target": target,
        "unit": unit,
        "better": better,
        "simulator_cores": {run: num(cores, 2) for run, cores in simulator_cores.items()},
    }
    return entry | {"simulator_limited": simulator_limited(entry)}


def missed(entry: dict[str, Any]) -> bool:
    target, share = entry["target"], entry["ratio"]
    if target is None:
        return False
    if share is None:
        return True
    return bool(share > target if entry.get("better") == "lower" else share < target)


def profile_note(misses: Sequence[str], profiles: dict[str, Any], plan: Plan) -> str:
    """A paragraph for the report: which targets were missed and what bounds each."""
    if not misses:
        return ""
    parts = [f"Missed: {'; '.join(misses)}."]
    parts += [f"{name}: {profile['bound']}." for name, profile in profiles.items()]
    if not plan.profiles:
        parts.append("Not profiled (run without --quick, or with --profile).")
    return " ".join(parts)


# --- one backlog run ------------------------------------------------------------------------


@dataclass
class RunResult:
    """One run over a pre-produced backlog, reduced to its steady middle."""

    label: str
    parameters: dict[str, Any]
    events_sent: int
    outputs: int
    dead_letters: int
    events: Steady
    calls: Steady
    by_worker: dict[str, int]
    cores: dict[str, float]
    machine_share: float
    foreign_cores: float
    cpu_s_per_1k_calls: dict[str, float]
    peak_rss_mib: dict[str, float]
    timings_s: dict[str, float]
    capped: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "parameters": self.parameters,
            "events_sent": self.events_sent,
            "outputs": self.outputs,
            "dead_letters": self.dead_letters,
            "capped": self.capped,
            "events_per_s": num(self.events.rate),
            "calls_per_s": num(self.calls.rate),
            "steady_events": self.events.as_dict(),
            "steady_calls": self.calls.as_dict(),
            "outputs_by_worker": self.by_worker,
            "cores_in_window": {k: num(v) for k, v in self.cores.items()},
            "machine_busy_share_in_window": num(self.machine_share),
            "foreign_cores_in_window": num(self.foreign_cores),
            "cpu_s_per_1k_calls": {k: num(v) for k, v in self.cpu_s_per_1k_calls.items()},
            "peak_rss_mib": {k: num(v, 1) for k, v in self.peak_rss_mib.items()},
            "timings_s": {k: num(v, 2) for k, v in self.timings_s.items()},
        }


async def wait_done(
    bench: Bench,
    group: WorkerGroup,
    topology: TopologyCopy,
    partitions: int,
    expected: int,
    cap_s: float,
) -> bool:
    """Wait until `expected` results (outputs + dead letters) are in Kafka; True when the run
    was cut at `cap_s` after its first output instead."""
    topics = [topology.output_topic, topology.dead_letter_topic]
    async with OffsetProbe(bench.bootstrap) as probe:
        first: float | None = None
        seen, progressed = 0, time.monotonic()
        while True:
            group.check_alive()
            count = await probe.count(topics, partitions)
            now = time.monotonic()
            if count >= expected:
                return False
            if count > seen:
                seen, progressed = count, now
            if count and first is None:
                first = now
            if first is not None and now - first >= cap_s:
                return True
            if now - progressed > 60:
                tails = "\n".join(f"--- {c.name}\n{c.log_tail(1500)}" for c in group.children)
                raise BenchError(f"no result for 60 s ({count} of {expected}):\n{tails}")
            await asyncio.sleep(0.25)


def steady_of(
    rows: Sequence[OutputRow], clock: Callable[[OutputRow], float]
) -> tuple[Steady, Steady]:
    """(events, calls) rates over the same steady window of the given clock."""
    events = steady_rate([(clock(r), 1.0) for r in rows], TRIM)
    calls = steady_rate([(clock(r), float(r.calls)) for r in rows], TRIM)
    return events, calls


async def run_backlog(
    bench: Bench,
    *,
    label: str,
    topology: TopologyCopy,
    sim: Child,
    concurrency: int,
    events: int,
    workers: int = 1,
    partitions: int = PARTITIONS,
    settle_first: bool = False,
    cap_s: float | None = None,
    processes: int = 1,
) -> RunResult:
    """Produce `events`, run `workers` workers over them, measure the steady middle.

    With `settle_first`, workers start first and the backlog is produced once the group
    owns every partition (several workers joining would otherwise rebalance mid-run). With
    `processes` above 1 each worker is a supervisor of that many, and its CPU and memory are
    those of its whole process tree."""
    await bench.publish_orgdata(sim)
    create_topics(bench.bootstrap, topology, partitions)
    encoded = encode_events(label, events)
    group = WorkerGroup()
    sampler = CpuSampler()
    bench.watch_common(sampler, sim)
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        with sampler:
            if not settle_first:
                timings["produce"] = await produce(
                    bench.bootstrap, topology.input_topic, encoded, partitions
                )
            start_workers(
                group,
                workers,
                label=label,
                run_dir=bench.run_dir,
                bootstrap=bench.bootstrap,
                sim=sim,
                topology=topology,
                concurrency=concurrency,
                processes=processes,
            )
            for n, pid in enumerate(group.pids, 1):
                sampler.watch(f"worker{n}", pid, tree=processes > 1)
            if settle_first:
                timings["settle"] = await wait_settled(group)
                timings["produce"] = await produce(
                    bench.bootstrap, topology.input_topic, encoded, partitions
                )
            capped = await wait_done(
                bench, group, topology, partitions, events, cap_s or bench.plan.run_s * 2
            )
            timings["run"] = time.monotonic() - began
        # Read the outputs while the workers shut down (the steady window is long past).
        stopping = asyncio.create_task(asyncio.to_thread(group.stop))
        records = await read_topic(bench.bootstrap, topology.output_topic, partitions)
        await stopping
    finally:
        group.stop()  # a no-op for workers already stopped
    async with OffsetProbe(bench.bootstrap) as probe:
        dead = await probe.count([topology.dead_letter_topic], partitions)
    rows = list({row.event_id: row for row in map(output_row, records)}.values())
    steady_events, steady_calls = steady_of(rows, lambda r: r.produced_at)
    start, end = steady_calls.start, steady_calls.end
    names = sampler.names()
    worker_names = [n for n in names if n.startswith("worker")]
    cores = {n: sampler.cores(n, start, end) for n in names}
    cores["workers"] = sum(cores[n] for n in worker_names)
    per_1k = 1000 / steady_calls.weight if steady_calls.weight else math.nan
    cpu_per_1k = {
        "worker": sum(sampler.cpu_s(n, start, end) for n in worker_names) * per_1k,
        "simulator": sampler.cpu_s("simulator", start, end) * per_1k,
    }
    if "broker" in names:
        cpu_per_1k["broker"] = sampler.cpu_s("broker", start, end) * per_1k
    timings["total"] = time.monotonic() - began
    pids = dict(zip(worker_names, group.pids, strict=True))
    by_worker = Counter(row.worker for row in rows)
    return RunResult(
        label=label,
        parameters={
            "topology_calls": list(topology.calls),
            "concurrency_env": concurrency,
            "workers": workers,
            "processes_per_worker": processes,
            "partitions": partitions,
            "worker_pids": pids,
            "input_topic": topology.input_topic,
            "output_topic": topology.output_topic,
        },
        events_sent=events,
        outputs=len(rows),
        dead_letters=dead,
        events=steady_events,
        calls=steady_calls,
        by_worker=dict(by_worker),
        cores=cores,
        machine_share=sampler.machine_share(start, end),
        foreign_cores=sampler.foreign_cores(start, end),
        cpu_s_per_1k_calls=cpu_per_1k,
        peak_rss_mib={n: sampler.peak_kib.get(n, 0) / 1024 for n in worker_names},
        timings_s=timings,
        capped=capped,
    )


# --- profiles of missed targets --------------------------------------------------------------


async def profile_pass(
    bench: Bench,
    *,
    name: str,
    keep: Sequence[str],
    sim: Child,
    concurrency: int,
    events_per_s: float,
    independent: bool = False,
) -> dict[str, Any]:
    """Run the configuration again with a backlog, profile the worker for `profile_s`
    with py-spy once outputs flow, and say what bounds it."""
    plan = bench.plan
    await bench.publish_orgdata(sim)
    topology = topology_copy(bench.run_dir, f"profile-{name}", keep=keep, independent=independent)
    create_topics(bench.bootstrap, topology, PARTITIONS)
    count = int(events_per_s * (plan.profile_s + 10)) + 100
    await produce(
        bench.bootstrap, topology.input_topic, encode_events(f"p-{name}", count), PARTITIONS
    )
    group = WorkerGroup()
    sampler = CpuSampler()
    bench.watch_common(sampler, sim)
    out = bench.run_dir / f"profile-{name}.txt"
    try:
        with sampler:
            start_workers(
                group,
                1,
                label=f"profile-{name}",
                run_dir=bench.run_dir,
                bootstrap=bench.bootstrap,
                sim=sim,
                topology=topology,
                concurrency=concurrency,
            )
            pid = group.pids[0]
            sampler.watch("worker", pid)
            topics = [topology.output_topic, topology.dead_letter_topic]
            async with OffsetProbe(bench.bootstrap) as probe:
                deadline = time.monotonic() + 60
                while await probe.count(topics, PARTITIONS) == 0:
                    group.check_alive()
                    if time.monotonic() > deadline:
                        raise BenchError(f"profile {name}: no output in 60 s")
                    await asyncio.sleep(0.25)
                await asyncio.sleep(2.0)  # past the start-up burst
                before = await probe.count(topics, PARTITIONS)
                started = time.time()
                recorded = await asyncio.to_thread(record_profile, pid, out, plan.profile_s)
                ended = time.time()
                after = await probe.count(topics, PARTITIONS)
    finally:
        group.stop()
    summary = summarise_profile(out) if recorded["file"] else {"samples": 0}
    cores = {n: sampler.cores(n, started, ended) for n in sampler.names()}
    cores["other processes"] = sampler.foreign_cores(started, ended)
    share = sampler.machine_share(started, ended)
    return {
        "name": name,
        "file": recorded["file"],
        "py_spy_mode": recorded["mode"],
        "py_spy_tries": recorded["tries"],
        "duration_s": num(ended - started, 2),
        "results_per_s_while_profiled": num((after - before) / (ended - started)),
        "cores": {k: num(v) for k, v in cores.items()},
        "machine_busy_share": num(share),
        **summary,
        "bound": bound_verdict(cores.get("worker", math.nan), share, cores, summary),
    }


# --- 1. concurrency efficiency ----------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One configuration of the concurrency scenario."""

    c: int
    calls_per_event: int

    @property
    def key(self) -> str:
        return f"c{self.c}-{self.calls_per_event}call"

    @property
    def keep(self) -> tuple[str, ...]:
        return ONE_CALL if self.calls_per_event == 1 else FAN_OUT

    @property
    def independent(self) -> bool:
        """Several calls run as a fan-out, with no retrieval step before them:
        support_triage drafts its reply from the other two answers (a graph, which the
        graph scenario measures), here it does not."""
        return self.calls_per_event > 1

    @property
    def event_concurrency(self) -> int:
        return max(1, round(self.c / self.calls_per_event))

    @property
    def calls_in_flight(self) -> int:
        return self.event_concurrency * self.calls_per_event

    @property
    def ideal_calls_per_s(self) -> float:
        return self.calls_in_flight / MODEL_LATENCY_S

    @property
    def slowest_call_s(self) -> float:
        """Expected latency of the slowest of an event's calls: the event holds all its slots
        until then. The maximum of k uniform draws on [a, b] averages a + (b - a) k / (k + 1)."""
        k = self.calls_per_event
        low = LATENCY_MS - JITTER_MS
        return (low + 2 * JITTER_MS * k / (k + 1)) / 1000

    @property
    def ceiling_calls_per_s(self) -> float:
        """The best possible rate once that wait for the slowest call is counted."""
        return self.calls_in_flight / self.slowest_call_s

    def ceiling_text(self, measured: float) -> str:
        return (
            f"{self.calls_per_event} calls per event hold their slots until the slowest "
            f"returns (expected {self.slowest_call_s * 1000:.0f} ms at {LATENCY_MS:g} +/- "
            f"{JITTER_MS:g} ms): ceiling {self.ceiling_calls_per_s:.0f} calls/s = "
            f"{self.ceiling_calls_per_s / self.ideal_calls_per_s:.3f} of C/0.2 s; measured "
            f"{measured / self.ceiling_calls_per_s:.3f} of that ceiling"
        )

    @property
    def title(self) -> str:
        if self.calls_per_event == 1:
            return f"C={self.c}, 1 call/event"
        return (
            f"C={self.c}, {self.calls_per_event} calls/event "
            f"({self.event_concurrency} events x {self.calls_per_event})"
        )


VARIANTS = (Variant(50, 1), Variant(50, 3), Variant(200, 1), Variant(200, 3))


async def run_variant(bench: Bench, variant: Variant, sim: Child) -> RunResult:
    plan = bench.plan
    topology = topology_copy(
        bench.run_dir, variant.key, keep=variant.keep, independent=variant.independent
    )
    events = math.ceil(variant.ideal_calls_per_s * plan.run_s / variant.calls_per_event)
    progress(f"concurrency {variant.title}: {events} events")
    result = await run_backlog(
        bench,
        label=variant.key,
        topology=topology,
        sim=sim,
        concurrency=variant.event_concurrency,
        events=events,
        cap_s=plan.run_s * plan.cap_factor,
    )
    result.parameters |= {
        "c": variant.c,
        "calls_per_event": variant.calls_per_event,
        "calls_in_flight": variant.calls_in_flight,
        "ideal_calls_per_s": variant.ideal_calls_per_s,
        "slowest_call_ms": round(variant.slowest_call_s * 1000, 1),
        "ceiling_calls_per_s": round(variant.ceiling_calls_per_s, 1),
        "share_of_ceiling": num(result.calls.rate / variant.ceiling_calls_per_s),
    }
    bench.runs[variant.key] = result
    progress(
        f"  {result.calls.rate:.1f} calls/s over {result.calls.window_s:.1f} s "
        f"({result.calls.rate / variant.ideal_calls_per_s:.3f} of ideal)"
    )
    return result


@contextlib.contextmanager
def running_simulator(bench: Bench, latency_ms: float, jitter_ms: float) -> Iterator[Child]:
    sim = simulator(bench.run_dir, latency_ms, jitter_ms)
    try:
        yield sim
    finally:
        sim.stop()


async def _concurrency(bench: Bench) -> dict[str, Any]:
    ratios: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    with running_simulator(bench, LATENCY_MS, JITTER_MS) as sim:
        for variant in VARIANTS:
            result = await run_variant(bench, variant, sim)
            runs.append(result.as_dict())
            ratios.append(
                ratio_entry(
                    f"calls/s vs C/0.2 s: {variant.title}",
                    result.calls.rate,
                    variant.ideal_calls_per_s,
                    CONCURRENCY_TARGETS[variant.c],
                    "calls/s",
                    simulator_cores={variant.key: result.cores.get("simulator")},
                )
            )
        for variant, entry in zip(VARIANTS, ratios, strict=True):
            if missed(entry) and bench.plan.profiles:
                progress(f"profiling {variant.key} (missed {entry['target']})")
                profiles[variant.key] = await profile_pass(
                    bench,
                    name=variant.key,
                    keep=variant.keep,
                    independent=variant.independent,
                    sim=sim,
                    concurrency=variant.event_concurrency,
                    events_per_s=bench.runs[variant.key].events.rate,
                )
                if variant.calls_per_event > 1:
                    measured = bench.runs[variant.key].calls.rate
                    profiles[variant.key]["bound"] += "; " + variant.ceiling_text(measured)
    cpu = {
        r["label"]: {
            "worker_cpu_s_per_1k_calls": r["cpu_s_per_1k_calls"]["worker"],
            "simulator_cpu_s_per_1k_calls": r["cpu_s_per_1k_calls"]["simulator"],
            "worker_cores": r["cores_in_window"].get("workers"),
            "share_of_ceiling": r["parameters"]["share_of_ceiling"],
            "ceiling_calls_per_s": r["parameters"]["ceiling_calls_per_s"],
        }
        for r in runs
    }
    return {
        "scenario": "concurrency",
        "title": "Concurrency efficiency (200 ms model)",
        "params": {
            "latency_ms": LATENCY_MS,
            "jitter_ms": JITTER_MS,
            "partitions": PARTITIONS,
            "run_s": bench.plan.run_s,
            "cap_s": bench.plan.run_s * bench.plan.cap_factor,
            "trim_each_end": TRIM,
            "baseline": "calls in flight / 0.2 s",
        },
        "ratios": ratios,
        "cpu": cpu,
        "runs": runs,
        "profiles": profiles,
        "misses": [e["name"] for e in ratios if missed(e)],
        "note": joined(
            profile_note([e["name"] for e in ratios if missed(e)], profiles, bench.plan),
            simulator_note(ratios),
        ),
    }


def concurrency_efficiency(bench: Bench) -> dict[str, Any]:
    """Scenario 1: completed calls/s as a share of C / 0.2 s, 1 and 3 calls per event."""
    return asyncio.run(_concurrency(bench))


async def reference(bench: Bench, variant: Variant) -> RunResult:
    """A run of scenario 1, measured now when that scenario did not run."""
    if variant.key not in bench.runs:
        with running_simulator(bench, LATENCY_MS, JITTER_MS) as sim:
            await run_variant(bench, variant, sim)
    return bench.runs[variant.key]


# --- 2. framework overhead --------------------------------------------------------------------

LEAN_CALL = ONE_CALL[0]


async def run_lean(
    bench: Bench, label: str, sim: Child, events: int, cap_s: float
) -> dict[str, Any]:
    """The lean consumer (`dev.bench.lean`) over a backlog of `events` on topics of its own,
    sending the worker's call to the same simulator at the same concurrency."""
    topology = topology_copy(bench.run_dir, label, keep=ONE_CALL)
    create_topics(bench.bootstrap, topology, PARTITIONS)
    encoded = encode_events(label, events)
    produce_s = await produce(bench.bootstrap, topology.input_topic, encoded, PARTITIONS)
    sampler = CpuSampler()
    bench.watch_common(sampler, sim)
    began = time.monotonic()
    child = start_lean(
        bench.run_dir,
        label,
        bootstrap=bench.bootstrap,
        sim=sim,
        topology=topology,
        call=LEAN_CALL,
        concurrency=OVERHEAD_CONCURRENCY,
    )
    try:
        with sampler:
            sampler.watch("lean", child.pid)
            async with OffsetProbe(bench.bootstrap) as probe:
                first: float | None = None
                while (count := await probe.count([topology.output_topic], PARTITIONS)) < events:
                    if not child.alive():
                        raise BenchError(f"lean consumer exited early:\n{child.log_tail()}")
                    now = time.monotonic()
                    if count and first is None:
                        first = now
                    if (first and now - first > cap_s) or now - began > cap_s + 60:
                        break
                    await asyncio.sleep(0.1)
            run_s = time.monotonic() - began
    finally:
        exit_code = child.stop()
    records = await read_topic(bench.bootstrap, topology.output_topic, PARTITIONS)
    steady = steady_rate([(r.timestamp / 1000, 1.0) for r in records], TRIM)
    window = (steady.start, steady.end)
    return {
        "label": label,
        "events_sent": events,
        "outputs": len(records),
        "events_per_s": num(steady.rate),
        "steady": steady.as_dict(),
        "cpu_s_per_1k_events": num(
            sampler.cpu_s("lean", *window) * 1000 / steady.weight if steady.weight else math.nan
        ),
        "cores_in_window": {n: num(sampler.cores(n, *window)) for n in sampler.names()},
        "foreign_cores_in_window": num(sampler.foreign_cores(*window)),
        "exit_code": exit_code,
        "summary": child.log_tail(600).strip().splitlines()[-1:],
        "timings_s": {"produce": num(produce_s, 2), "run": num(run_s, 2)},
    }


def model_title(latency_ms: float) -> str:
    return "instant model" if latency_ms == 0 else f"{latency_ms:g} ms model"


async def overhead_at(
    bench: Bench, latency_ms: float, jitter_ms: float, profiles: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Lean consumer, worker, lean consumer again on one simulator: the ratio entry and the
    runs. The lean side is the mean of the runs before and after, so a drift in the
    machine's speed during the three runs affects both sides alike."""
    plan = bench.plan
    cap_s = plan.run_s * plan.cap_factor
    tag = f"{latency_ms:g}ms"
    title = model_title(latency_ms)
    if latency_ms:
        worker_events = lean_events = math.ceil(
            OVERHEAD_CONCURRENCY / (latency_ms / 1000) * plan.run_s
        )
    else:
        worker_events, lean_events = plan.overhead_worker_events, plan.lean_events
    with running_simulator(bench, latency_ms, jitter_ms) as sim:

        async def lean_run(side: str) -> dict[str, Any]:
            progress(f"overhead ({title}): lean consumer, {lean_events} events")
            run = await run_lean(bench, f"lean-{tag}-{side}", sim, lean_events, cap_s)
            simulator_cores = run["cores_in_window"].get("simulator")
            progress(f"  {run['events_per_s']} events/s, simulator {simulator_cores} cores")
            return run

        lean = [await lean_run("a")]
        progress(f"overhead ({title}): worker C={OVERHEAD_CONCURRENCY}, {worker_events} events")
        worker = await run_backlog(
            bench,
            label=f"overhead-worker-{tag}",
            topology=topology_copy(bench.run_dir, f"overhead-worker-{tag}", keep=ONE_CALL),
            sim=sim,
            concurrency=OVERHEAD_CONCURRENCY,
            events=worker_events,
            cap_s=cap_s,
        )
        # Rated like the lean consumer, by its output records' Kafka timestamps.
        records = await read_topic(bench.bootstrap, worker.parameters["output_topic"], PARTITIONS)
        by_record = steady_rate([(r.timestamp / 1000, 1.0) for r in records], TRIM)
        worker_sim = worker.cores.get("simulator", math.nan)
        progress(f"  {by_record.rate:.1f} events/s, simulator {worker_sim:.2f} cores")
        lean.append(await lean_run("b"))
        baseline = statistics.mean(float(run["events_per_s"]) for run in lean)
        entry = ratio_entry(
            f"worker / lean consumer events/s, {title} (C={OVERHEAD_CONCURRENCY}, 1 call/event)",
            by_record.rate,
            baseline,
            OVERHEAD_TARGETS[latency_ms],
            "events/s",
            simulator_cores={
                "worker": worker.cores.get("simulator"),
                **{
                    f"lean {side}": run["cores_in_window"].get("simulator")
                    for side, run in zip("ab", lean, strict=True)
                },
            },
        )
        if missed(entry) and plan.profiles:
            progress(f"profiling the worker on the {title}")
            profiles[f"overhead-worker-{tag}"] = await profile_pass(
                bench,
                name=f"overhead-worker-{tag}",
                keep=ONE_CALL,
                sim=sim,
                concurrency=OVERHEAD_CONCURRENCY,
                events_per_s=by_record.rate,
            )
    runs = {
        "model": title,
        "latency_ms": latency_ms,
        "jitter_ms": jitter_ms,
        "worker": worker.as_dict()
        | {
            "events_per_s_by_record_timestamps": num(by_record.rate),
            "steady_by_record": by_record.as_dict(),
        },
        "lean": lean,
    }
    return entry, runs


async def _overhead(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    profiles: dict[str, Any] = {}
    instant, instant_runs = await overhead_at(bench, 0, 0, profiles)
    slow, slow_runs = await overhead_at(bench, LATENCY_MS, JITTER_MS, profiles)
    c50 = await reference(bench, Variant(50, 1))
    cap_s = plan.run_s * plan.cap_factor
    with running_simulator(bench, LATENCY_MS, JITTER_MS) as sim:
        progress(f"overhead: naive worker (C=1, 200 ms model), {plan.naive_events} events")
        naive = await run_backlog(
            bench,
            label="naive",
            topology=topology_copy(bench.run_dir, "naive", keep=ONE_CALL),
            sim=sim,
            concurrency=1,
            events=plan.naive_events,
            cap_s=max(cap_s, plan.naive_events / 5 * 1.5),
        )
        progress(f"  {naive.events.rate:.2f} events/s")
    naive_entry = ratio_entry(
        "naive worker (C=1, 200 ms model) events/s vs worker C=50",
        naive.events.rate,
        c50.events.rate,
        None,
        "events/s",
        simulator_cores={
            "naive": naive.cores.get("simulator"),
            c50.label: c50.cores.get("simulator"),
        },
    )
    entries = [instant, slow, naive_entry]
    misses = [e["name"] for e in entries if missed(e)]
    return {
        "scenario": "overhead",
        "title": "Framework overhead: the worker against a lean consumer doing the same work",
        "params": {
            "concurrency": OVERHEAD_CONCURRENCY,
            "worker_events_instant": plan.overhead_worker_events,
            "lean_events_instant": plan.lean_events,
            "partitions": PARTITIONS,
            "calls_per_event": 1,
            "call": LEAN_CALL,
            "baseline": "dev.bench.lean: aiokafka consume -> one aiohttp chat completion per "
            "event -> produce (acks=all) -> in-order commit, C in flight, one event loop, own "
            "process; mean of a run before and a run after the worker, same simulator",
            "rate_clock": "output records' Kafka timestamps, steady middle",
            "simulator": f"own process, not pinned to a CPU ({os.cpu_count()} cores shared "
            "with the broker, the system under test and the benchmark)",
        },
        "ratios": entries,
        "models": [instant_runs, slow_runs],
        "naive": naive.as_dict(),
        "c50_reference_events_per_s": num(c50.events.rate),
        "profiles": profiles,
        "misses": misses,
        "note": joined(profile_note(misses, profiles, plan), simulator_note(entries)),
    }


def joined(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def simulator_note(entries: Sequence[dict[str, Any]]) -> str:
    """Names the ratios the simulator limited: their rate is the simulator's, not a measure
    of the side under test."""
    limited = [f"{e['name']} ({simulator_text(e)})" for e in entries if e.get("simulator_limited")]
    if not limited:
        return ""
    return (
        "Simulator-limited (it kept about a full core busy, so it set the rate): "
        + "; ".join(limited)
        + "."
    )


def framework_overhead(bench: Bench) -> dict[str, Any]:
    """Scenario 2: worker vs the lean consumer on an instant and a 200 ms model; the naive
    floor."""
    return asyncio.run(_overhead(bench))


# --- 3. latency ---------------------------------------------------------------------------------


@dataclass
class Arrivals:
    """Outputs as they reach the benchmark's consumer: event id -> (arrival, row)."""

    seen: dict[str, tuple[float, OutputRow]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


async def consume_outputs(
    bootstrap: str, topic: str, partitions: int, arrivals: Arrivals, stop: asyncio.Event
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = partitions_of(topic, partitions)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.time()
            for records in batch.values():
                for record in records:
                    row = output_row(record)
                    arrivals.seen.setdefault(row.event_id, (now, row))
            if batch:
                arrivals.changed.set()
    finally:
        await consumer.stop()


async def paced(
    producer: Any, topic: str, prefix: str, rate: float, duration_s: float, partitions: int
) -> dict[str, float]:
    """Send events at `rate` per second for `duration_s`; returns event id -> its timestamp
    (set when the event is built, just before it is sent)."""
    total = max(1, round(rate * duration_s))
    sent: dict[str, float] = {}
    pending = []
    began = time.monotonic()
    n = 0
    while n < total:
        due = min(total, int((time.monotonic() - began) * rate) + 1)
        while n < due:
            event = ticket(prefix, n)
            pending.append(
                await producer.send(topic, event.value, key=event.key, partition=n % partitions)
            )
            sent[event.event_id] = event.created
            n += 1
        await asyncio.sleep(0.002)
    await asyncio.gather(*pending)
    return sent


async def wait_arrived(arrivals: Arrivals, ids: Sequence[str], timeout_s: float) -> None:
    """Until every id has an output, or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    missing = set(ids)
    while True:
        arrivals.changed.clear()
        missing = {i for i in missing if i not in arrivals.seen}
        remaining = deadline - time.monotonic()
        if not missing or remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrivals.changed.wait(), remaining)


async def _latency(bench: Bench, max_calls_per_s: float | None = None) -> dict[str, Any]:
    plan = bench.plan
    variant = Variant(200, 1)
    if max_calls_per_s is None:
        max_calls_per_s = (await reference(bench, variant)).calls.rate
    topology = topology_copy(bench.run_dir, "latency", keep=ONE_CALL)
    create_topics(bench.bootstrap, topology, PARTITIONS)
    phases: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    arrivals = Arrivals()
    stop = asyncio.Event()
    group = WorkerGroup()
    sampler = CpuSampler()
    with running_simulator(bench, LATENCY_MS, JITTER_MS) as sim, sampler:
        await bench.publish_orgdata(sim)
        bench.watch_common(sampler, sim)
        producer = AIOKafkaProducer(bootstrap_servers=bench.bootstrap, acks="all")
        await producer.start()
        reader = asyncio.create_task(
            consume_outputs(bench.bootstrap, topology.output_topic, PARTITIONS, arrivals, stop)
        )
        try:
            start_workers(
                group,
                1,
                label="latency",
                run_dir=bench.run_dir,
                bootstrap=bench.bootstrap,
                sim=sim,
                topology=topology,
                concurrency=variant.event_concurrency,
            )
            sampler.watch("worker", group.pids[0])
            await wait_settled(group)
            warm = await paced(
                producer,
                topology.input_topic,
                "warmup",
                max_calls_per_s * 0.5,
                plan.latency_warmup_events / (max_calls_per_s * 0.5),
                PARTITIONS,
            )
            await wait_arrived(arrivals, list(warm), 30)
            for share in (0.5, 0.9):
                rate = max_calls_per_s * share
                progress(
                    f"latency: {rate:.0f} events/s ({share:.0%} of max) "
                    f"for {plan.latency_phase_s:g} s"
                )
                began = time.time()
                sent = await paced(
                    producer,
                    topology.input_topic,
                    f"load{round(share * 100)}",
                    rate,
                    plan.latency_phase_s,
                    PARTITIONS,
                )
                sent_s = time.time() - began
                await wait_arrived(arrivals, list(sent), 30)
                group.check_alive()
                phase = latency_phase(share, rate, sent, sent_s, arrivals)
                # CPU while this phase's events were sent (the worker's steady state).
                ended = began + sent_s
                cores = {n: sampler.cores(n, began, ended) for n in sampler.names()}
                worker_ms = sampler.cpu_s("worker", began, ended) * 1000 / phase["sent"]
                phase |= {
                    "cores_while_sending": {n: num(v) for n, v in cores.items()},
                    "machine_busy_share": num(sampler.machine_share(began, ended)),
                    "foreign_cores": num(sampler.foreign_cores(began, ended)),
                    "worker_cpu_ms_per_event": num(worker_ms),
                }
                phases.append(phase)
                progress(
                    f"  p50 {phase['p50_ms']} ms, p95 {phase['p95_ms']} ms, "
                    f"p99 {phase['p99_ms']} ms"
                )
                for p in ("p50", "p95", "p99"):
                    ratios.append(
                        ratio_entry(
                            f"end-to-end {p} at {share:.0%} of max ({rate:.0f} events/s)",
                            phase[f"{p}_ms"],
                            LATENCY_MS,
                            None,
                            "ms",
                            better="lower",
                            simulator_cores={f"{share:.0%} phase": cores.get("simulator")},
                        )
                    )
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await reader
            await producer.stop()
            group.stop()
    return {
        "scenario": "latency",
        "title": "End-to-end latency under steady load (C=200, 1 call/event, 200 ms model)",
        "params": {
            "max_events_per_s": num(max_calls_per_s),
            "max_from": "scenario 1, C=200, 1 call/event",
            "phase_s": plan.latency_phase_s,
            "worker_concurrency": variant.event_concurrency,
            "from": "the event's timestamp (set when built, just before it is sent)",
            "to": "the output's arrival at the benchmark's consumer",
            "baseline": "the model's latency, 200 ms",
        },
        "ratios": ratios,
        "phases": phases,
        "misses": [],
        "note": joined(latency_note(phases), simulator_note(ratios)),
    }


def latency_note(phases: Sequence[dict[str, Any]]) -> str:
    """Says when events waited long before the worker took them, and whether the worker's
    CPU explains it: at the ceiling of its one event loop it cannot keep up with the rate,
    below it the events queue for another reason (a stall in fetching, a buffer)."""
    notes = []
    for phase in phases:
        waits = [w for w in phase["wait_before_worker_p50_ms_by_second"] if w is not None]
        cores = phase["cores_while_sending"].get("worker")
        if len(waits) < 2 or cores is None:
            continue
        late = statistics.median(waits[len(waits) // 2 :])
        if late <= 4 * max(waits[0], 25.0):
            continue
        seen = (
            f"At {phase['share_of_max']:.0%} of max ({phase['target_rate']:.0f} events/s), "
            f"events waited {waits[0]:.0f} ms before the worker took them in the first second "
            f"and {late:.0f} ms (median) in the second half; the model took "
            f"{phase['in_worker_p50_ms']:.0f} ms. The worker used {cores:.2f} cores, "
            f"{phase['worker_cpu_ms_per_event']:.2f} ms of CPU an event"
        )
        if cores >= LOOP_CEILING_CORES:
            notes.append(
                f"{seen}: close to the 0.9-1 core a worker process uses when CPU-bound, so "
                "the queue grew with the load it did not take."
            )
        else:
            notes.append(
                f"{seen}, below what it uses when CPU-bound: a queue CPU does not explain."
            )
    return " ".join(notes)


LOOP_CEILING_CORES = 0.8
"""A worker process at or above this many cores is CPU-bound: in the backlog runs, where
the model is never what it waits for, one uses 0.9 to 1 core."""


def latency_phase(
    share: float, rate: float, sent: dict[str, float], sent_s: float, arrivals: Arrivals
) -> dict[str, Any]:
    got = [(i, arrivals.seen[i]) for i in sent if i in arrivals.seen]
    e2e = sorted((arrival - sent[i]) * 1000 for i, (arrival, _) in got)
    queued = sorted((row.received_at - sent[i]) * 1000 for i, (_, row) in got)
    inside = sorted(row.worker_latency_ms for _, (_, row) in got)
    last = max((arrival for _, (arrival, _) in got), default=math.nan)
    first_sent = min(sent.values())
    # A queue that grows during the phase shows as a later half slower than the first.
    middle = statistics.median(sent.values())
    halves = [
        sorted((a - sent[i]) * 1000 for i, (a, _) in got if (sent[i] < middle) == early)
        for early in (True, False)
    ]
    return {
        "share_of_max": share,
        "target_rate": num(rate),
        "sent": len(sent),
        "sent_rate": num(len(sent) / sent_s),
        "answered": len(got),
        "lost": len(sent) - len(got),
        "answered_rate": num(len(got) / (last - first_sent)) if got else None,
        "p50_ms": num(percentile(e2e, 0.50), 1),
        "p95_ms": num(percentile(e2e, 0.95), 1),
        "p99_ms": num(percentile(e2e, 0.99), 1),
        "max_ms": num(e2e[-1], 1) if e2e else None,
        "wait_before_worker_p50_ms_by_second": wait_by_second(sent, got),
        "p50_first_half_ms": num(percentile(halves[0], 0.50), 1),
        "p50_second_half_ms": num(percentile(halves[1], 0.50), 1),
        "wait_before_worker_p50_ms": num(percentile(queued, 0.50), 1),
        "wait_before_worker_p95_ms": num(percentile(queued, 0.95), 1),
        "in_worker_p50_ms": num(percentile(inside, 0.50), 1),
        "in_worker_p95_ms": num(percentile(inside, 0.95), 1),
    }


def wait_by_second(
    sent: dict[str, float], got: Sequence[tuple[str, tuple[float, OutputRow]]]
) -> list[float | None]:
    """Median wait before the worker took the event, per second of sending: a queue that
    builds up grows from one second to the next; a stall shows as a bump."""
    first = min(sent.values())
    by_second: dict[int, list[float]] = {}
    for event_id, (_, row) in got:
        second = int(sent[event_id] - first)
        by_second.setdefault(second, []).append((row.received_at - sent[event_id]) * 1000)
    return [
        num(statistics.median(by_second[s]), 1) if s in by_second else None
        for s in range(max(by_second, default=-1) + 1)
    ]


def latency(bench: Bench, max_calls_per_s: float | None = None) -> dict[str, Any]:
    """Scenario 3: p50/p95/p99 at 50% and 90% of scenario 1's C=200 throughput."""
    return asyncio.run(_latency(bench, max_calls_per_s))


# --- 4. scaling ---------------------------------------------------------------------------------


async def _scaling(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    concurrency = 50
    runs: list[RunResult] = []
    with running_simulator(bench, LATENCY_MS, JITTER_MS) as sim:
        for workers in plan.scaling_workers:
            ideal = workers * concurrency / MODEL_LATENCY_S
            events = math.ceil(ideal * plan.run_s)
            progress(f"scaling: {workers} worker(s), {events} events")
            label = f"scale{workers}"
            result = await run_backlog(
                bench,
                label=label,
                topology=topology_copy(bench.run_dir, label, keep=ONE_CALL),
                sim=sim,
                concurrency=concurrency,
                events=events,
                workers=workers,
                partitions=SCALING_PARTITIONS,
                settle_first=True,
                cap_s=plan.run_s * plan.cap_factor,
            )
            result.parameters["ideal_events_per_s"] = ideal
            runs.append(result)
            progress(f"  {result.events.rate:.1f} events/s")
    one = runs[0].events.rate
    ratios = [
        ratio_entry(
            f"{r.parameters['workers']} worker(s) x C=50 events/s vs 1 worker",
            r.events.rate,
            one,
            None,
            "events/s",
            simulator_cores={r.label: r.cores.get("simulator")},
        )
        for r in runs
    ]
    return {
        "scenario": "scaling",
        "title": "Workers in one group on an 8-partition topic (200 ms model, C=50 each)",
        "params": {
            "per_worker_concurrency": concurrency,
            "partitions": SCALING_PARTITIONS,
            "calls_per_event": 1,
            "cpu_count": os.cpu_count(),
            "note": "workers, simulator, broker and benchmark share the machine's cores",
        },
        "ratios": ratios,
        "runs": [r.as_dict() for r in runs],
        "misses": [],
        "note": simulator_note(ratios),
    }


def scaling(bench: Bench) -> dict[str, Any]:
    """Scenario 4: 1, 2 and 4 workers in one group; events/s and ratio to one worker."""
    return asyncio.run(_scaling(bench))


# --- 5. memory ----------------------------------------------------------------------------------


def memory(bench: Bench) -> dict[str, Any]:
    """Scenario 5: the worker's peak RSS (VmHWM) at C=200, from the runs of scenario 1."""

    async def runs() -> list[RunResult]:
        keys = (Variant(50, 1), Variant(200, 1), Variant(200, 3))
        return [await reference(bench, v) for v in keys]

    c50, c200, c200x3 = asyncio.run(runs())

    def peak(result: RunResult) -> float:
        return max(result.peak_rss_mib.values())

    ratios = [
        ratio_entry(
            f"peak RSS (VmHWM) {variant.title} vs C=50, 1 call/event",
            peak(result),
            peak(c50),
            None,
            "MiB",
            better="lower",
            simulator_cores={
                c50.label: c50.cores.get("simulator"),
                result.label: result.cores.get("simulator"),
            },
        )
        for variant, result in ((Variant(200, 1), c200), (Variant(200, 3), c200x3))
    ]
    return {
        "scenario": "memory",
        "title": "Worker peak resident memory (VmHWM, /proc/<pid>/status)",
        "params": {"taken_during": "scenario 1 runs", "baseline": "C=50, 1 call/event"},
        "ratios": ratios,
        "peak_rss_mib": {r.label: num(peak(r), 1) for r in (c50, c200, c200x3)},
        "misses": [],
        "note": simulator_note(ratios),
    }


# --- 6. graph -----------------------------------------------------------------------------------

GRAPH_TARGET = 1.1
GRAPH_CONCURRENCY = 20
"""Events in flight: what the graph's scheduling costs, below the load where the worker's
CPU (about 100 events/s on 2 cores) would queue every step (scenario 1 measures that)."""


async def _graph(bench: Bench) -> dict[str, Any]:
    topology = topology_copy(bench.run_dir, "graph")
    as_graph(topology.path)
    events = math.ceil(GRAPH_CONCURRENCY / MODEL_LATENCY_S / 3 * bench.plan.run_s)
    progress(f"graph: {events} events of 4 calls, 3 on the critical path")
    with running_simulator(bench, LATENCY_MS, JITTER_MS) as sim:
        result = await run_backlog(
            bench,
            label="graph",
            topology=topology,
            sim=sim,
            concurrency=GRAPH_CONCURRENCY,
            events=events,
            cap_s=bench.plan.run_s * bench.plan.cap_factor * 2,
        )
    records = await read_topic(bench.bootstrap, topology.output_topic, PARTITIONS)
    ratios, of_sum = [], []
    for record in records:
        output = json.loads(record.value)
        latencies = {call["name"]: call["latency_ms"] for call in output["calls"]}
        ratios.append(output["totals"]["latency_ms"] / critical_path_ms(latencies))
        of_sum.append(output["totals"]["latency_ms"] / sum(latencies.values()))
    if not ratios:
        raise BenchError("the graph run produced no output")
    ratios.sort()
    of_sum.sort()
    p50 = percentile(ratios, 0.5)
    entry = ratio_entry(
        "4-step graph, event time in the worker / its critical path's latencies, p50",
        p50,
        1.0,
        GRAPH_TARGET,
        "x",
        better="lower",
        simulator_cores={result.label: result.cores.get("simulator")},
    )
    progress(f"  time / critical path p50 {p50:.3f}, p95 {percentile(ratios, 0.95):.3f}")
    return {
        "scenario": "graph",
        "title": "A graph of 4 model calls (200 ms model, C=20): time against the critical path",
        "params": {
            "calls": [call["name"] for call in GRAPH_CALLS],
            "concurrency": GRAPH_CONCURRENCY,
            "latency_ms": LATENCY_MS,
            "jitter_ms": JITTER_MS,
        },
        "ratios": [entry],
        "critical_path_ratio": {
            "p50": num(p50),
            "p95": num(percentile(ratios, 0.95)),
            "max": num(ratios[-1]),
        },
        "time_over_sum_of_calls_p50": num(percentile(of_sum, 0.5)),
        "outputs": len(ratios),
        "run": result.as_dict(),
        "misses": [entry["name"]] if missed(entry) else [],
        "note": simulator_note([entry]),
    }


def graph(bench: Bench) -> dict[str, Any]:
    """Scenario 6: a 4-step graph; its events' time over their critical path."""
    return asyncio.run(_graph(bench))


# --- 7. processes -------------------------------------------------------------------------------

PROCESSES_TARGET = 1.7
"""Events/s of `--processes 2` over `--processes 1` on an instant model: there the worker's
own CPU is all a run costs, and one process keeps about one core busy."""


def processes_note(runs: Sequence[RunResult]) -> str:
    """Where the cores went in each run: the workers share the machine with the simulator,
    the broker and the benchmark, which a second process cannot make faster."""
    parts = []
    for run in runs:
        cores = run.cores
        broker = f", broker {cores['broker']:.2f}" if "broker" in cores else ""
        parts.append(
            f"--processes {run.parameters['processes_per_worker']}: workers "
            f"{cores.get('workers', math.nan):.2f} cores, simulator "
            f"{cores.get('simulator', math.nan):.2f}{broker}, other processes "
            f"{run.foreign_cores:.2f}, machine {run.machine_share:.0%} busy of "
            f"{os.cpu_count()} cores, outputs by process "
            f"{sorted(run.by_worker.values(), reverse=True)}"
        )
    return "Cores in the steady window: " + "; ".join(parts) + "."


async def _processes(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    cap_s = plan.run_s * plan.cap_factor
    runs: list[RunResult] = []
    with running_simulator(bench, 0, 0) as sim:
        for processes in (1, 2):
            events = plan.overhead_worker_events * processes
            label = f"processes{processes}"
            progress(
                f"processes: --processes {processes}, C={OVERHEAD_CONCURRENCY} per process, "
                f"instant model, {events} events"
            )
            result = await run_backlog(
                bench,
                label=label,
                topology=topology_copy(bench.run_dir, label, keep=ONE_CALL),
                sim=sim,
                concurrency=OVERHEAD_CONCURRENCY,
                events=events,
                settle_first=True,
                cap_s=cap_s,
                processes=processes,
            )
            runs.append(result)
            progress(
                f"  {result.events.rate:.1f} events/s, workers "
                f"{result.cores.get('workers', math.nan):.2f} cores, simulator "
                f"{result.cores.get('simulator', math.nan):.2f} cores"
            )
    one, two = runs
    entry = ratio_entry(
        f"--processes 2 / --processes 1 events/s, instant model (C={OVERHEAD_CONCURRENCY} "
        "per process, 1 call/event)",
        two.events.rate,
        one.events.rate,
        PROCESSES_TARGET,
        "events/s",
        simulator_cores={run.label: run.cores.get("simulator") for run in runs},
    )
    return {
        "scenario": "processes",
        "title": "One worker command, one and two processes (instant model, 1 call/event)",
        "params": {
            "concurrency_per_process": OVERHEAD_CONCURRENCY,
            "events_per_process": plan.overhead_worker_events,
            "partitions": PARTITIONS,
            "calls_per_event": 1,
            "latency_ms": 0,
            "cpu_count": os.cpu_count(),
            "cpu": "a supervisor's CPU is that of its process tree (its children, restarted "
            "ones included)",
        },
        "ratios": [entry],
        "runs": [run.as_dict() for run in runs],
        "misses": [entry["name"]] if missed(entry) else [],
        "note": joined(processes_note(runs), simulator_note([entry])),
    }


def processes(bench: Bench) -> dict[str, Any]:
    """Scenario 7: `llmflow worker --processes 2` against `--processes 1`, events/s."""
    return asyncio.run(_processes(bench))


# --- command ------------------------------------------------------------------------------------


def table(results: Sequence[dict[str, Any]]) -> str:
    """Every ratio of every scenario, one line each."""
    header = (
        f"{'scenario':<12} {'measure':<78} {'value':>10} {'baseline':>10} "
        f"{'ratio':>7} {'target':>7}  {'':<4}  simulator cores"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        for e in result["ratios"]:
            target = "-" if e["target"] is None else f"{e['target']:.2f}"
            verdict = "MISS" if missed(e) else ("ok" if e["target"] is not None else "")
            value = "n/a" if e["value"] is None else f"{e['value']:.1f}"
            baseline = "n/a" if e["baseline"] is None else f"{e['baseline']:.1f}"
            share = "n/a" if e["ratio"] is None else f"{e['ratio']:.3f}"
            lines.append(
                f"{result['scenario']:<12} {e['name'] + ' [' + e['unit'] + ']':<78} "
                f"{value:>10} {baseline:>10} {share:>7} {target:>7}  {verdict:<4}  "
                f"{simulator_text(e)}"
            )
    return "\n".join(lines)


FOREIGN_LOAD_WARNING = 0.15  # cores used by other processes that make a run suspect


def foreign_load(results: Sequence[dict[str, Any]]) -> list[str]:
    """Runs during which processes outside the benchmark kept the machine busy."""
    found = []
    for result in results:
        named: list[tuple[str, Any]] = [(r["label"], r) for r in result.get("runs", [])]
        for model in result.get("models", []):
            named.append((model["worker"]["label"], model["worker"]))
            named += [(run["label"], run) for run in model["lean"]]
        if "naive" in result:
            named.append(("naive", result["naive"]))
        for phase in result.get("phases", []):
            named.append((f"latency {phase['share_of_max']:.0%}", phase))
        for label, run in named:
            cores = run.get("foreign_cores_in_window", run.get("foreign_cores"))
            if cores is not None and cores > FOREIGN_LOAD_WARNING:
                found.append(f"{result['scenario']} {label}: {cores:.2f} cores")
    return found


def details(results: Sequence[dict[str, Any]]) -> str:
    """CPU per call, timings and what the profiles show, under the table."""
    lines: list[str] = []
    if noisy := foreign_load(results):
        lines.append(
            "WARNING: other processes kept the machine busy during some runs (their ratios "
            "are suspect; rerun on a quiet machine): " + "; ".join(noisy)
        )
    for result in results:
        lines.append(f"{result['scenario']}: {result.get('elapsed_s', 0):.0f} s")
        if "error" in result:
            lines.append(f"  FAILED: {result['error'][:1000]}")
            continue
        for label, cpu in result.get("cpu", {}).items():
            lines.append(
                f"  {label}: worker {cpu['worker_cpu_s_per_1k_calls']} CPU s/1k calls "
                f"({cpu['worker_cores']} cores), simulator {cpu['simulator_cpu_s_per_1k_calls']} "
                f"CPU s/1k calls; {cpu['share_of_ceiling']} of the ceiling "
                f"{cpu['ceiling_calls_per_s']} calls/s (slowest-call wait counted)"
            )
        for run in result.get("runs", []):
            lines.append(
                f"  {run['label']}: {run['outputs']} outputs, {run['dead_letters']} dead letters, "
                f"window {run['steady_calls']['window_s']} s, cores {run['cores_in_window']}, "
                f"machine busy {run['machine_busy_share_in_window']} "
                f"(other processes {run['foreign_cores_in_window']} cores), "
                f"timings {run['timings_s']}{' (capped)' if run['capped'] else ''}"
            )
        for model in result.get("models", []):
            w = model["worker"]
            lines.append(
                f"  {w['label']}: {w['outputs']} outputs, {w['events_per_s_by_record_timestamps']} "
                f"events/s (produced_at clock {w['events_per_s']}), cores {w['cores_in_window']}"
            )
            for run in model["lean"]:
                lines.append(
                    f"  {run['label']}: {run['outputs']} outputs, {run['events_per_s']} events/s, "
                    f"{run['cpu_s_per_1k_events']} CPU s/1k events, cores "
                    f"{run['cores_in_window']}, exit {run['exit_code']} {run['summary']}"
                )
        if result["scenario"] == "overhead":
            n = result["naive"]
            lines.append(
                f"  naive: {n['events_per_s']} events/s over {n['steady_events']['window_s']} s"
            )
        for phase in result.get("phases", []):
            lines.append(
                f"  {phase['share_of_max']:.0%}: sent {phase['sent']} at {phase['sent_rate']}/s, "
                f"answered {phase['answered']} (lost {phase['lost']}), max {phase['max_ms']} ms, "
                f"p50 first/second half {phase['p50_first_half_ms']}/"
                f"{phase['p50_second_half_ms']} ms, "
                f"waiting before the worker p50/p95 {phase['wait_before_worker_p50_ms']}/"
                f"{phase['wait_before_worker_p95_ms']} ms, in the worker p50/p95 "
                f"{phase['in_worker_p50_ms']}/{phase['in_worker_p95_ms']} ms, "
                f"worker {phase['worker_cpu_ms_per_event']} CPU ms/event, "
                f"cores {phase['cores_while_sending']}, machine busy {phase['machine_busy_share']}"
            )
        for name, profile in result.get("profiles", {}).items():
            lines.append(f"  profile {name} ({profile['file']}): {profile['bound']}")
            inclusive = profile.get("inclusive_share", {})
            shown = ", ".join(f"{k} {v:.0%}" for k, v in list(inclusive.items())[:6])
            lines.append(f"    inclusive: {shown}")
            for leaf in profile.get("top_leaf_functions", [])[:5]:
                lines.append(f"    {leaf['share']:.1%} {leaf['frame']}")
    return "\n".join(lines)


RUNNERS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "concurrency": concurrency_efficiency,
    "overhead": framework_overhead,
    "latency": latency,
    "scaling": scaling,
    "memory": memory,
    "graph": graph,
    "processes": processes,
}


def run_all(
    bench: Bench,
    names: Sequence[str],
    saved: Callable[[dict[str, dict[str, Any]]], None] = lambda results: None,
) -> dict[str, dict[str, Any]]:
    """The named scenarios in order, keyed by name (the shape `dev.bench.report` reads).

    A scenario that fails is recorded with its error and the others still run; `saved` is
    called after each one, so an interrupted run keeps what it measured."""
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        began = time.monotonic()
        try:
            result = RUNNERS[name](bench)
        except Exception as exc:
            log.exception("scenario %s failed", name)
            result = {
                "scenario": name,
                "error": f"{type(exc).__name__}: {exc}"[-4000:],
                "ratios": [],
                "misses": [],
                "note": f"failed: {type(exc).__name__}: {str(exc)[:300]}",
            }
        result["elapsed_s"] = round(time.monotonic() - began, 1)
        results[name] = result
        saved(results)
        progress(f"{name} done in {result['elapsed_s']:.0f} s")
    return results


@contextlib.contextmanager
def broker(run_dir: Path) -> Iterator[tuple[str, int | None]]:
    """KAFKA_BOOTSTRAP_SERVERS when set, else one local broker for the whole run."""
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers, None
        return
    with LocalKafka(run_dir / "kafka") as local:
        assert local.process is not None
        yield local.bootstrap_servers, local.process.pid


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dev.bench.worker_scenarios",
        description="Benchmark llmflow workers on a real broker against the model SIMULATOR.",
    )
    parser.add_argument("--quick", action="store_true", help="short runs (under 2 minutes)")
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument("--run-dir", type=Path, help="logs, topologies, profiles, results")
    parser.add_argument("--out", type=Path, help="also write the results JSON here")
    profiles = parser.add_mutually_exclusive_group()
    profiles.add_argument("--profile", action="store_true", help="profile missed targets")
    profiles.add_argument("--no-profile", action="store_true", help="never profile")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {','.join(SCENARIOS)}")
    args.names = [n for n in SCENARIOS if n in names]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    plan = QUICK if args.quick else FULL
    if args.profile or args.no_profile:
        plan = Plan(**{**plan.__dict__, "profiles": bool(args.profile)})
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="llmflow-bench-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    about = machine()
    progress(f"run folder {run_dir}")
    run_id = uuid.uuid4().hex[:8]

    def save(results: dict[str, dict[str, Any]]) -> None:
        report = {
            "benchmark": "worker_scenarios",
            "quick": args.quick,
            "run_id": run_id,
            "machine": about,
            "plan": plan.__dict__ | {"scaling_workers": list(plan.scaling_workers)},
            "run_dir": str(run_dir),
            "elapsed_s": round(time.monotonic() - began, 1),
            "scenarios": results,
        }
        text = json.dumps(report, indent=2) + "\n"
        (run_dir / "worker_scenarios.json").write_text(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)

    with broker(run_dir) as (bootstrap, broker_pid):
        progress(f"broker {bootstrap} up after {time.monotonic() - began:.1f} s")
        bench = Bench(bootstrap, run_dir, plan, broker_pid)
        results = run_all(bench, args.names, save)
    elapsed = time.monotonic() - began
    save(results)
    print(table(list(results.values())))
    print()
    print(details(list(results.values())))
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in about.items()))
    print(f"total {elapsed:.0f} s; results in {run_dir / 'worker_scenarios.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
