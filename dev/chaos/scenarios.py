"""The reliability scenarios: each starts what it needs, breaks something while events flow,
waits until every event has a result (or nothing moves any more) and returns its row.

Every scenario gets its own topics (a topology copy), consumer group, SIMULATOR and workers,
all on the one broker of the run; the sample org data is published to its topics there once,
before the first worker starts. Sizes come from a `Plan`: `FULL` (the whole suite in under
25 minutes on 2 cores) or `QUICK` (a smoke run of each).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from dev.bench.harness import (
    TopologyCopy,
    create_topics,
    percentile,
    publish_org_samples,
    ticket,
    topology_copy,
)
from dev.chaos.http import Publisher, StreamReader
from dev.chaos.ledger import (
    Counts,
    Feed,
    Seen,
    Tally,
    count,
    gaps_after,
    latencies_ms,
    sdk_duplicates,
)
from dev.chaos.rig import Broker, ChaosError, Sampler, Simulator, Workers
from dev.launch import Child, spawn, start_modelsim, wait_http
from dev.probes import rss_kib, scrape, total
from llmflow.services.broker.local import free_port
from llmflow.services.orgdata.publish import LoadReport
from llmflow.services.sdk import text_event

log = logging.getLogger(__name__)

ONE_CALL = ("summarize",)
SLOW_STALL_S = 200.0  # a model call may retry for 120 s, its last attempt time out after 60 s
SOAK_RESERVE_S = 150.0  # the soak's drain, SDK pass and shutdown, then `bound`
MODEL_FLAGS = ("--latency-ms", "100", "--jitter-ms", "20", "--seed", "7")


@dataclass(frozen=True)
class Plan:
    """How big each scenario is."""

    kill_events: int
    kill_rate: float
    kills: int
    scale_phases_s: tuple[float, float, float]
    scale_rate: float
    broker_before_s: float
    broker_after_s: float
    broker_rate: float
    outage_before_s: float
    outage_s: float
    outage_after_s: float
    outage_rate: float
    hung_events: int
    poison_hostile: int
    poison_good: int
    gateway_events: int
    gateway_rate: float
    gateway_kills: int
    soak_events: int
    soak_feed_s: float
    """The most time the soak spends sending (it sends fewer events when that runs out)."""
    budget_s: float | None
    """The whole run's time budget: the soak sends only for the time left of it, keeping
    `SOAK_RESERVE_S` for its own drain and the scenarios after it."""
    soak_concurrency: int
    """With an instant model the worker is CPU-bound (about 2 ms of CPU per 1-call event):
    at 25 in flight it answered 401 events/s on 2 shared cores."""
    bound_events: int
    stall_s: float
    """A scenario stops waiting for results when none came for this long: longer than a
    rebalance waiting for a killed member (faust's 60 s session timeout)."""


FULL = Plan(
    kill_events=3000,
    kill_rate=25.0,
    kills=3,
    scale_phases_s=(25.0, 40.0, 25.0),
    scale_rate=35.0,
    broker_before_s=25.0,
    broker_after_s=35.0,
    broker_rate=20.0,
    outage_before_s=15.0,
    outage_s=180.0,
    outage_after_s=15.0,
    outage_rate=10.0,
    hung_events=500,
    poison_hostile=1000,
    poison_good=200,
    gateway_events=3000,
    gateway_rate=30.0,
    gateway_kills=2,
    soak_events=200_000,
    soak_feed_s=330.0,
    budget_s=24 * 60.0,
    soak_concurrency=25,
    bound_events=2000,
    stall_s=90.0,
)
QUICK = Plan(
    kill_events=400,
    kill_rate=10.0,
    kills=1,
    scale_phases_s=(10.0, 20.0, 10.0),
    scale_rate=20.0,
    broker_before_s=10.0,
    broker_after_s=15.0,
    broker_rate=20.0,
    outage_before_s=10.0,
    outage_s=20.0,
    outage_after_s=10.0,
    outage_rate=10.0,
    hung_events=150,
    poison_hostile=1000,
    poison_good=200,
    gateway_events=600,
    gateway_rate=20.0,
    gateway_kills=1,
    soak_events=20_000,
    soak_feed_s=120.0,
    budget_s=None,
    soak_concurrency=25,
    bound_events=500,
    stall_s=90.0,
)


@dataclass
class Suite:
    """What every scenario shares: the broker, the run folder, the plan."""

    broker: Broker
    run_dir: Path
    plan: Plan
    started: float = field(default_factory=time.monotonic)

    def left_s(self) -> float | None:
        """Seconds left of the run's budget (None: no budget)."""
        if self.plan.budget_s is None:
            return None
        return self.plan.budget_s - (time.monotonic() - self.started)

    orgdata_published: bool = False
    """Whether the sample org data is on the broker (`publish_orgdata`)."""

    async def publish_orgdata(self) -> None:
        """Publish the sample org data once per run, before the first worker starts (every
        worker reads the tables from their topics when it starts). The policies' passages
        are embedded by a simulator of its own, without latency or faults, stopped after:
        no scenario's simulator, nor its request log, sees those requests."""
        if self.orgdata_published:
            return
        began = time.monotonic()
        reports = await asyncio.to_thread(self._publish_orgdata)
        self.orgdata_published = True
        progress(f"org data published in {time.monotonic() - began:.1f} s:")
        for report in reports:
            progress(f"  {report}")

    def _publish_orgdata(self) -> list[LoadReport]:
        sim = start_modelsim(free_port(), self.run_dir / "logs", ["--seed", "7"])
        try:
            return publish_org_samples(self.broker.bootstrap, sim)
        finally:
            sim.stop()


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    counts: Counts | None
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    error: str | None = None


def progress(message: str) -> None:
    log.warning("%s", message)


# --- one scenario's processes and ledgers ----------------------------------------------------


@dataclass
class Stage:
    """A scenario's topology copy, simulator, workers, feed and tally."""

    suite: Suite
    label: str
    topology: TopologyCopy
    partitions: int
    sim: Simulator
    workers: Workers
    feed: Feed
    tally: Tally
    notes: list[str] = field(default_factory=list)
    expect_dead_letters: bool = False

    def watch(self) -> None:
        """Restart any worker that died on its own; the row's notes say so."""
        for what in self.workers.revive():
            progress(f"{self.label}: {what}; restarted")

    async def during(self, seconds: float) -> None:
        """Wait, watching the workers."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.watch()
            await asyncio.sleep(min(0.5, left))

    async def until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return True
            self.watch()
            await asyncio.sleep(0.25)
        return False

    async def finish(self, *, cap_s: float, stall_s: float | None = None) -> Counts:
        """Wait for every result, then count: lost, duplicates (raw and after the SDK),
        calls paid twice, drain time."""
        stall_s = stall_s or self.suite.plan.stall_s
        complete = await self.tally.wait_all(
            self.feed, stall_s=stall_s, cap_s=cap_s, tick=self.watch
        )
        if not complete:
            self.notes.append(f"stopped waiting after {stall_s:.0f} s without a result")
        self.sim.collect()
        topics = [self.topology.output_topic, self.topology.dead_letter_topic]
        topics.append(self.topology.parked_topic)
        sdk = await asyncio.to_thread(
            sdk_duplicates, self.suite.broker.bootstrap, topics, self.tally.count
        )
        counts = count(self.feed, self.tally, paid_twice=self.sim.requests.paid_twice(), sdk=sdk)
        await asyncio.to_thread(self.keep_ledgers)
        if self.sim.requests.missed:
            counts.notes.append(f"{self.sim.requests.missed} simulator requests not logged")
        if self.workers.deaths:
            counts.notes.append("unplanned exits: " + "; ".join(self.workers.deaths))
        if counts.parked:
            counts.notes.append(f"{counts.parked} parked")
        if counts.dead_letters and not self.expect_dead_letters:
            counts.notes.append(f"dead letters: {self.dead_letter_kinds()}")
        return counts

    def keep_ledgers(self) -> None:
        """Write the simulator's request log and every result to the run folder: which call
        was paid twice, when, and which worker published an event twice."""
        run_dir = self.suite.run_dir
        (run_dir / f"{self.label}-requests.json").write_bytes(
            json.dumps(self.sim.requests.entries).encode()
        )
        results = [dataclasses.asdict(r) for r in self.tally.results]
        (run_dir / f"{self.label}-results.json").write_text(json.dumps(results, default=str))

    def dead_letter_kinds(self) -> str:
        kinds = Counter(r.what for r in self.tally.results if r.kind == "dead_letter")
        return ", ".join(f"{kind} {n}" for kind, n in kinds.most_common(3))


@contextlib.asynccontextmanager
async def stage(
    suite: Suite,
    label: str,
    *,
    partitions: int = 4,
    keep: tuple[str, ...] = (),
    sim_flags: tuple[str, ...] = MODEL_FLAGS,
    **settings: object,
) -> AsyncIterator[Stage]:
    """Topics, a simulator, a (not yet started) group of workers with `settings`, a feed and
    a tally; everything stopped on the way out."""
    await suite.publish_orgdata()
    bootstrap = suite.broker.bootstrap
    topology = topology_copy(suite.run_dir, label, keep=keep)
    create_topics(bootstrap, topology, partitions)
    results = [topology.output_topic, topology.dead_letter_topic, topology.parked_topic]
    sim = Simulator(suite.run_dir / "logs", sim_flags)
    workers: Workers | None = None
    try:
        workers = Workers(
            suite.run_dir,
            label,
            bootstrap,
            sim,
            [topology.path],
            topic_partitions=partitions,
            **settings,
        )
        async with (
            Feed(bootstrap, topology.input_topic, partitions) as feed,
            Tally(bootstrap, results, partitions) as tally,
        ):
            yield Stage(suite, label, topology, partitions, sim, workers, feed, tally)
    finally:
        if workers is not None:
            await asyncio.to_thread(workers.stop_all)
        await asyncio.to_thread(sim.stop)


def worker_of(output_worker: str | None) -> int | None:
    """The pid in an output's `worker` (`host:pid`)."""
    if not output_worker:
        return None
    tail = output_worker.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


@dataclass(frozen=True)
class Kill:
    """One SIGKILL of a worker and its restart."""

    killed: float
    restarted: float
    partitions: set[int]
    """Input partitions the worker was answering just before."""

    def resumed_after(self, outputs: Sequence[Seen]) -> float | None:
        """Seconds from the restart until every partition the killed worker held had an
        output again (from whichever worker took it); None if one never did."""
        firsts = []
        for partition in self.partitions:
            after = [r.ts for r in outputs if r.source[1] == partition and r.ts > self.killed]
            if not after:
                return None
            firsts.append(min(after))
        return max(0.0, max(firsts, default=self.restarted) - self.restarted)


# --- 1. kill -9 -------------------------------------------------------------------------------


async def kill(suite: Suite) -> Row:
    """3 workers; SIGKILL one (a different one each time) while events flow, restart it at
    once; the longest pause of the group's outputs after each restart."""
    plan = suite.plan
    async with stage(suite, "kill", partitions=6, concurrency=50) as s:
        group = [s.workers.start() for _ in range(3)]
        await s.workers.settled()
        feeding = asyncio.create_task(s.feed.paced("kill", plan.kill_events, plan.kill_rate))
        kills: list[Kill] = []
        await s.during(min(15.0, plan.kill_events / plan.kill_rate / 4))
        for n in range(plan.kills):
            victim = group[n % len(group)]
            owned = {
                r.source[1]
                for r in s.tally.results[-500:]
                if r.kind == "output" and worker_of(r.worker) == victim.pid
            }
            killed = time.time()
            s.workers.kill(victim)
            s.workers.restart(victim)
            kills.append(Kill(killed, time.time(), owned))
            progress(f"kill: SIGKILL {victim.name}, restarted as pid {victim.pid}")

            def resumed(pid: int = victim.pid) -> bool:
                return any(worker_of(r.worker) == pid for r in s.tally.results[-200:])

            if not await s.until(resumed, 180.0):
                s.notes.append(f"{victim.name} gave no output 180 s after its restart")
            if n + 1 < plan.kills:
                await s.during(10.0)
        await feeding
        counts = await s.finish(cap_s=900)
        outputs = [r for r in s.tally.results if r.kind == "output"]
        resumes = [k.resumed_after(outputs) for k in kills]
        times = sorted(r.ts for r in outputs)
        pause = max(gaps_after(times, k.killed, k.killed + 120)[0] for k in kills)
        shown = "/".join("never" if r is None else f"{r:.1f}" for r in resumes)
        known = [r for r in resumes if r is not None]
        worst = f"{max(known):.1f} s" if len(known) == len(resumes) else "never"
        s.notes.append(
            f"resume after restart max {worst} ({len(kills)} kill{'s' if len(kills) > 1 else ''}: "
            f"{shown} s); longest pause of all outputs {pause:.1f} s"
        )
        return Row("kill", counts, s.notes)


# --- 2. scale 1 -> 3 -> 1 ----------------------------------------------------------------------


async def scale(suite: Suite) -> Row:
    """One worker, two more join while events flow, then those two leave (SIGTERM)."""
    plan = suite.plan
    alone, three, back = plan.scale_phases_s
    events = round((alone + three + back) * plan.scale_rate)
    async with stage(suite, "scale", partitions=6, concurrency=50) as s:
        first = s.workers.start()
        await s.workers.settled()
        feeding = asyncio.create_task(s.feed.paced("scale", events, plan.scale_rate))
        await s.during(alone)
        joined = time.monotonic()
        extra = [s.workers.start(), s.workers.start()]
        settle_s = await s.workers.settled()
        await s.during(max(0.0, three - (time.monotonic() - joined)))
        left = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(s.workers.stop, w) for w in extra))
        back_s = await s.workers.settled()
        await s.during(max(0.0, back - (time.monotonic() - left)))
        await feeding
        counts = await s.finish(cap_s=600)
        by_worker = Counter(worker_of(r.worker) for r in s.tally.results if r.kind == "output")
        share = by_worker.get(first.pid, 0) / max(1, sum(by_worker.values()))
        s.notes.append(
            f"3 workers settled {settle_s:.1f} s after the join, 1 again {back_s:.1f} s after "
            f"the leave; first worker answered {share:.0%}"
        )
        return Row("scale", counts, s.notes)


# --- 3. broker SIGKILL -----------------------------------------------------------------------


async def broker(suite: Suite) -> Row:
    """2 workers busy; SIGKILL the broker, start it again on its data folder."""
    plan = suite.plan
    if suite.broker.local is None:
        return Row("broker", None, ["skipped: KAFKA_BOOTSTRAP_SERVERS names a broker not ours"])
    events = round((plan.broker_before_s + plan.broker_after_s) * plan.broker_rate)
    async with stage(suite, "broker", partitions=4, concurrency=50) as s:
        for _ in range(2):
            s.workers.start()
        await s.workers.settled()
        feeding = asyncio.create_task(s.feed.paced("broker", events, plan.broker_rate))
        await s.during(plan.broker_before_s)
        killed = time.time()
        suite.broker.kill()
        progress("broker: SIGKILL, restarting on its data folder")
        down_s = await asyncio.to_thread(suite.broker.restart)
        await s.during(plan.broker_after_s)
        await feeding
        counts = await s.finish(cap_s=600)
        pause, ended = gaps_after(s.tally.output_times(), killed, killed + 600)
        alive = sum(1 for w in s.workers.running if w.child.alive())
        s.notes.append(
            f"broker back after {down_s:.1f} s; outputs resumed {ended - killed:.1f} s after the "
            f"kill (pause {pause:.1f} s); {alive}/2 workers alive"
        )
        return Row("broker", counts, s.notes)


# --- 4. model endpoint outage ----------------------------------------------------------------


async def outage(suite: Suite) -> Row:
    """SIGKILL the simulator for `outage_s` while events flow; start it on the same port."""
    plan = suite.plan
    span = plan.outage_before_s + plan.outage_s + plan.outage_after_s
    events = round(span * plan.outage_rate)
    async with stage(suite, "outage", partitions=4, concurrency=50) as s:
        s.workers.start()
        await s.workers.settled()
        feeding = asyncio.create_task(s.feed.paced("outage", events, plan.outage_rate))
        await s.during(plan.outage_before_s)
        s.sim.kill()
        progress(f"outage: simulator killed for {plan.outage_s:.0f} s")
        await s.during(plan.outage_s)
        back = time.time()
        await asyncio.to_thread(s.sim.restart)
        await s.during(plan.outage_after_s)
        await feeding
        counts = await s.finish(cap_s=900, stall_s=SLOW_STALL_S)
        after = [r.ts for r in s.tally.results if r.kind == "output" and r.ts >= back]
        resumed = f"{min(after) - back:.1f} s" if after else "never"
        s.notes.append(f"simulator down {plan.outage_s:.0f} s; outputs resumed {resumed} after")
        return Row("outage", counts, s.notes)


# --- 5. hung model calls ---------------------------------------------------------------------


async def hung(suite: Suite) -> Row:
    """5% of model calls never answer (10 minutes); event latency p50/p99, no hedging."""
    return await _hung(suite, "hung", hedge='{"enabled": false}')


async def hedged(suite: Suite) -> Row:
    """The same 5% of hung calls with hedging on (`LLMFLOW_HEDGE`): a slow attempt is sent
    again after the p95 of recent latency, and the first answer wins."""
    return await _hung(suite, "hedged", hedge='{"enabled": true}')


async def _hung(suite: Suite, label: str, hedge: str) -> Row:
    plan = suite.plan
    flags = ("--latency-ms", "50", "--rate-slow", "0.05", "--slow-ms", "600000", "--seed", "7")
    async with stage(suite, label, sim_flags=flags, concurrency=50, hedge=hedge) as s:
        s.workers.start()
        await s.workers.settled()
        await s.feed.paced(label, plan.hung_events, 20.0)
        counts = await s.finish(cap_s=900, stall_s=SLOW_STALL_S)
        latencies = latencies_ms(s.feed, s.tally)
        p50, p99 = percentile(latencies, 0.5) / 1000, percentile(latencies, 0.99) / 1000
        s.notes.append(
            f"event latency p50 {p50:.2f} s, p99 {p99:.1f} s, max {latencies[-1] / 1000:.1f} s"
            if latencies
            else "no event answered"
        )
        return Row(label, counts, s.notes)


# --- 6. poison records -----------------------------------------------------------------------

HUGE_TEXT_CHARS = 900_000  # under the broker's default 1 MB record limit, far over the contract's


def hostile_records(n: int, rng: random.Random) -> list[tuple[str, bytes | None, bytes | None]]:
    """`n` records a worker must turn into dead letters: (kind, key, value)."""
    good = json.loads(text_event("hostile", key="C-1001", event_id="x").model_dump_json())
    wrong: list[object] = [
        {},
        [],
        "a string",
        42,
        None,
        good | {"kind": "video"},
        {k: v for k, v in good.items() if k != "kind"},
        good | {"id": 5},
        good | {"timestamp": "2024-01-01T00:00:00"},
        good | {"text": ""},
        good | {"kind": "image", "image": {"url": "file:///etc/passwd"}},
        good | {"schema_version": 99},
    ]
    records: list[tuple[str, bytes | None, bytes | None]] = []
    for i in range(n):
        kind = ["tombstone", "not_json", "deep", "contract"][i % 4] if i >= 2 else "huge"
        if kind == "tombstone":
            records.append((kind, b"C-1001", None))
        elif kind == "not_json":
            records.append((kind, b"k", b"\xff" + rng.randbytes(rng.randrange(200))))
        elif kind == "deep":
            opener, closer = rng.choice([(b"[", b"]"), (b'{"id":', b"}")])
            records.append((kind, None, opener * 5000 + b"1" + closer * 5000))
        elif kind == "contract":
            body = wrong[i // 4 % len(wrong)]
            if isinstance(body, dict) and "id" in body and body["id"] == "x":
                body = body | {"id": f"wrong-{i}"}
            records.append((kind, b"C-1002", json.dumps(body).encode()))
        else:
            big = good | {"id": f"huge-{i}", "text": "x" * HUGE_TEXT_CHARS}
            records.append((kind, b"C-1003", json.dumps(big).encode()))
    return records


async def poison(suite: Suite) -> Row:
    """Hostile records mixed with good events within about a second; the worker must stay
    alive and in its group, every hostile record get a dead letter, every good one an
    output."""
    plan = suite.plan
    rng = random.Random(315)
    async with stage(suite, "poison", concurrency=50) as s:
        s.expect_dead_letters = True
        worker = s.workers.start()
        await s.workers.settled()
        mixed: list[tuple[str, bytes | None, bytes | None, str | None]] = [
            (kind, key, value, None)
            for kind, key, value in hostile_records(plan.poison_hostile, rng)
        ]
        for n in range(plan.poison_good):
            event = ticket("good", n)
            mixed.append(("good", event.key, event.value, event.event_id))
        rng.shuffle(mixed)
        began = time.monotonic()
        for kind, key, value, event_id in mixed:
            await s.feed.send(value, key, event_id if kind == "good" else None, time.time())
        await s.feed.flush()
        sent_s = time.monotonic() - began
        counts = await s.finish(cap_s=600)
        kinds_by_source: dict[tuple[str, int, int], set[str]] = {}
        for result in s.tally.results:
            kinds_by_source.setdefault(result.source, set()).add(result.kind)
        good_ok = sum(
            1 for x in s.feed.sent if x.event_id and "output" in kinds_by_source.get(x.source, ())
        )
        bad_dead = sum(
            1
            for x in s.feed.sent
            if not x.event_id and "dead_letter" in kinds_by_source.get(x.source, ())
        )
        try:
            share = total(scrape(worker.metrics_port), "llmflow_quota_share_ratio")
        except OSError:
            share = 0.0
        alive = worker.child.alive() and worker.restarts == 0
        s.notes.append(
            f"sent in {sent_s:.1f} s; hostile {bad_dead}/{plan.poison_hostile} dead letters, good "
            f"{good_ok}/{plan.poison_good} outputs; worker {'alive' if alive else 'DIED'}, "
            f"{'in its group' if share > 0 else 'NOT in its group'} (share {share:.2f})"
        )
        return Row("poison", counts, s.notes)


# --- 7. gateway kill -9 ----------------------------------------------------------------------


GATEWAY_TOKEN = "chaos-gateway-token-0001"
GATEWAY_BATCH = 10


def _start_gateway(s: Stage, port: int, generation: int) -> Child:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": s.suite.broker.bootstrap,
        "LLMFLOW_GATEWAY_PORT": str(port),
        "LLMFLOW_GATEWAY_TOKENS": json.dumps({GATEWAY_TOKEN: {"tenant": "chaos"}}),
        "LLMFLOW_GATEWAY_WORKER_GROUP": s.workers.app_id,
        "LLMFLOW_GATEWAY_HEARTBEAT_S": "2",
    }
    args = ["gateway", "--topology", str(s.topology.path)]
    child = spawn(f"gateway-{generation}", args, s.suite.run_dir / "logs", env)
    wait_http(f"http://127.0.0.1:{port}/readyz", child, timeout_s=120)
    return child


async def gateway(suite: Suite) -> Row:
    """Events published over HTTP (batches of 10, sent again with the same ids until a 202)
    to a gateway SIGKILLed and restarted while they flow, one worker answering; a stream of
    the results, resumed by its last id after each kill, must see every one."""
    plan = suite.plan
    async with stage(suite, "gateway", keep=ONE_CALL, concurrency=50) as s:
        s.workers.start()
        await s.workers.settled()
        port = free_port()
        generation = 1
        current = await asyncio.to_thread(_start_gateway, s, port, generation)
        base = f"http://127.0.0.1:{port}"
        topic = s.topology.input_topic
        publisher = Publisher(base, topic, GATEWAY_TOKEN, s.feed)
        reader = StreamReader(base, topic, GATEWAY_TOKEN)
        events = [ticket("gateway", n) for n in range(plan.gateway_events)]
        sampler = Sampler({"rss": lambda: rss_kib(current.pid)}, 1.0)
        async with aiohttp.ClientSession() as session:
            reading = asyncio.create_task(reader.run(session))
            await asyncio.wait_for(reader.connected.wait(), 30)
            with sampler:
                feeding = asyncio.create_task(
                    publisher.paced(session, events, plan.gateway_rate, GATEWAY_BATCH)
                )
                feed_s = plan.gateway_events / plan.gateway_rate
                for _ in range(plan.gateway_kills):
                    await s.during(feed_s / (plan.gateway_kills + 1))
                    await asyncio.to_thread(current.kill)
                    generation += 1
                    progress(f"gateway: SIGKILL, restarting as gateway-{generation}")
                    began = time.monotonic()
                    current = await asyncio.to_thread(_start_gateway, s, port, generation)
                    s.notes.append(f"ready again {time.monotonic() - began:.1f} s after kill")
                await feeding
                counts = await s.finish(cap_s=600)
                results = {r.event_id for r in s.tally.results if r.event_id is not None}
                await s.until(lambda: results <= set(reader.seen), 60.0)
                late_rss = rss_kib(current.pid)
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        current.stop()
        missed = len(results - set(reader.seen))
        twice = sum(n - 1 for n in reader.seen.values() if n > 1)
        retried = ", ".join(f"{why} {n}" for why, n in publisher.retries.most_common())
        peak = sampler.peak("rss")
        s.notes.append(
            f"{plan.gateway_kills} gateway kills; batches sent again: {retried or 'none'}; "
            f"stream: {missed} results missed, {twice} read twice, {reader.reconnects} "
            f"reconnects; gateway RSS peak {(peak or 0) / 1024:.0f} MiB, last "
            f"{(late_rss or 0) / 1024:.0f} MiB"
        )
        if missed:
            counts.notes.append(f"the resumed stream missed {missed} results")
        return Row("gateway", counts, s.notes)


# --- 8. soak ---------------------------------------------------------------------------------


async def soak(suite: Suite) -> Row:
    """One worker, instant model, a long stream; resident memory every second."""
    plan = suite.plan
    events = plan.soak_events
    async with stage(
        suite, "soak", keep=ONE_CALL, sim_flags=("--seed", "7"), concurrency=plan.soak_concurrency
    ) as s:
        worker = s.workers.start()
        await s.workers.settled()
        feed_s = plan.soak_feed_s
        if (left := suite.left_s()) is not None:
            feed_s = max(60.0, min(feed_s, left - SOAK_RESERVE_S))
        sampler = Sampler({"rss": lambda: rss_kib(worker.pid)}, 1.0)
        with sampler:
            began = time.time()
            sent = await s.feed.paced(
                "soak",
                events,
                100_000.0,
                answered=lambda: s.tally.count,
                max_ahead=2000,
                until=time.monotonic() + feed_s,
            )
            counts = await s.finish(cap_s=900)
        times = s.tally.output_times()
        mark = min(10_000, len(times) // 2)
        if mark:
            early, late = sampler.at("rss", times[mark - 1]), sampler.at("rss", times[-1])
            rate = len(times) / (times[-1] - began)
            if early and late:
                s.notes.append(
                    f"RSS {mark // 1000}k->{len(times) / 1000:.0f}k "
                    f"{(late - early) / early:+.1%} ({early / 1024:.0f}->{late / 1024:.0f} MiB); "
                    f"{rate:.0f} events/s at C={plan.soak_concurrency}, 1 call/event"
                )
        if sent < events:
            s.notes.append(
                f"{events:,} events did not fit: {sent:,} sent in {feed_s:.0f} s "
                f"(the time the run's budget left)"
            )
        return Row("soak", counts, s.notes)


# --- 9. bounded memory -----------------------------------------------------------------------


async def bound(suite: Suite) -> Row:
    """A slow model (2 s) and a queue of events: in-flight events never exceed the worker's
    concurrency, and memory stays flat."""
    plan = suite.plan
    concurrency = 100
    flags = ("--latency-ms", "2000", "--seed", "7")
    async with stage(suite, "bound", sim_flags=flags, concurrency=concurrency) as s:
        await s.feed.paced("bound", plan.bound_events, 100_000.0)
        await s.feed.flush()
        worker = s.workers.start()

        def in_flight() -> float | None:
            return total(scrape(worker.metrics_port, timeout_s=1.0), "llmflow_in_flight_events")

        sampler = Sampler({"in_flight": in_flight, "rss": lambda: rss_kib(worker.pid)}, 0.5)
        with sampler:
            counts = await s.finish(cap_s=900)
        most = sampler.peak("in_flight")
        peak = sampler.peak("rss")
        s.notes.append(
            f"max in flight {most or 0:.0f} (concurrency {concurrency}); peak RSS "
            f"{(peak or 0) / 1024:.0f} MiB; 2 s model, {plan.bound_events:,} events queued"
        )
        return Row("bound", counts, s.notes)


Scenario = Callable[[Suite], Awaitable[Row]]
SCENARIOS: dict[str, Scenario] = {
    "kill": kill,
    "scale": scale,
    "broker": broker,
    "outage": outage,
    "hung": hung,
    "hedged": hedged,
    "poison": poison,
    "gateway": gateway,
    "soak": soak,
    "bound": bound,
}


async def run_one(suite: Suite, name: str) -> Row:
    began = time.monotonic()
    try:
        row = await SCENARIOS[name](suite)
    except (ChaosError, Exception) as exc:
        log.exception("scenario %s failed", name)
        row = Row(name, None, [f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"], error=repr(exc))
    row.elapsed_s = time.monotonic() - began
    return row
