"""`llmflow replay`: a range of the live input topic, run through a candidate topology.

Reads the range with a consumer group of its own (`llmflow-replay.<name>.<version>`),
runs each event through the candidate's pipeline (the worker's, with its retries, fallbacks
and prices) and writes every result, output, dead letter or parked event alike, to the
shadow topic (`<output topic>.shadow.<version>`). It writes nowhere else but its own state
topic: never the live output, dead-letter or route topics (an output still names the routes
it would have taken).

Like the worker, it pays for a call once: answers and finished events are kept in the state
topic until the group has committed past them (`state`), so a replay killed and started
again goes on where it was without replaying what it finished or paying twice. It takes
`quota_share` of each model's quota, parks a tenant's events once live plus shadow spend
reach the tenant's budget, and stops taking events once its own spend reaches `max_usd`
(run it again to go on). Progress and cost so far go to `report` every `progress_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from llmflow.errors import LlmflowError
from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.services.broker.security import client_options
from llmflow.services.broker.topics import ensure_topics, partition_counts
from llmflow.services.orgdata.publish import COMPACTED
from llmflow.services.shadow.ranges import PartitionRange, resolve
from llmflow.services.shadow.state import ReplayState, position
from llmflow.services.worker.budgets import Budget, SpendView, follow_changelog, period_key
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.orgdata import org_data
from llmflow.services.worker.outage import OutageGate, handle_through_outages
from llmflow.services.worker.pipeline import Pipeline, Result, SourceMeta
from llmflow.services.worker.ports import OverBudget
from llmflow.services.worker.settings import Settings
from llmflow.services.worker.shadow import SHADOW_HEADER, shadow_topic_problem
from llmflow.topologies.spec import Topology, topic_safe

log = logging.getLogger(__name__)


def shadow_topic(topology: Topology) -> str:
    """`<output topic>.shadow.<version>`, the version made a legal topic name."""
    return topology.shadow_output_topic


def replay_group(topology: Topology, options: ReplayOptions | None = None) -> str:
    """`llmflow-replay.<name>.<version>.<range>`: a run of the same range goes on where the
    last one stopped; another range is another replay (its committed offsets would mean
    nothing for this one)."""
    return f"llmflow-replay.{topology.name}.{topic_safe(topology.version)}.{_range_id(options)}"


def _range_id(options: ReplayOptions | None) -> str:
    if options is None:
        return "all"
    offsets = sorted(
        ((-1 if p is None else p), lo, hi) for p, (lo, hi) in (options.offsets or {}).items()
    )
    asked = [
        options.start.isoformat() if options.start else None,
        options.end.isoformat() if options.end else None,
        offsets if options.offsets is not None else None,
    ]
    return hashlib.sha256(repr(asked).encode()).hexdigest()[:8]


@dataclass(slots=True)
class Progress:
    """What a replay has done so far (this run), and what it has still to do."""

    topology: str
    version: str
    shadow_topic: str
    total: int = 0
    """Events in the range."""
    done: int = 0
    """Events finished, in this run or (`resumed`) an earlier one."""
    resumed: int = 0
    outputs: int = 0
    dead_letters: int = 0
    parked: int = 0
    calls_paid: int = 0
    calls_reused: int = 0
    cost_usd: float = 0.0
    stopped: str = ""
    """Why the replay ended early ('' when it read its whole range)."""
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.resumed) / elapsed
        share = 100 * self.done / self.total if self.total else 100.0
        left = self.total - self.done
        eta = f", about {left / rate:.0f} s left" if rate > 0 and left else ""
        return (
            f"replay {self.topology} v{self.version}: {self.done}/{self.total} events "
            f"({share:.0f}%), {self.outputs} outputs, {self.dead_letters} dead letters, "
            f"{self.parked} parked, {self.calls_paid} calls paid, ${self.cost_usd:.6f} "
            f"(shadow), {rate:.1f} events/s{eta}"
        )

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("started")
        data["seconds"] = round(time.monotonic() - self.started, 3)
        data["cost_usd"] = round(self.cost_usd, 9)
        return data


class ShadowBudgets:
    """Tenant budgets over live spend (followed from the live spend changelog) plus the
    replay's own, and the replay's cap `max_usd` (None: no cap)."""

    def __init__(self, budgets: dict[str, Budget], live: SpendView, max_usd: float | None) -> None:
        self._budgets = budgets
        self._live = live
        self._max_usd = max_usd
        self._shadow: dict[tuple[str, str], float] = {}
        self.spent = 0.0

    @property
    def exhausted(self) -> bool:
        return self._max_usd is not None and self.spent >= self._max_usd

    def over_budget(self, tenant: str) -> OverBudget | None:
        budget = self._budgets.get(tenant)
        if budget is None:
            return None
        period = period_key(budget.period, datetime.now(UTC))
        spent = self._live.total(tenant, period) + self._shadow.get((tenant, period), 0.0)
        return OverBudget(period, spent, budget.usd) if spent >= budget.usd else None

    def charge(self, tenant: str, cost_usd: float) -> None:
        self.spent += cost_usd
        budget = self._budgets.get(tenant)
        if budget is not None:
            key = (tenant, period_key(budget.period, datetime.now(UTC)))
            self._shadow[key] = self._shadow.get(key, 0.0) + cost_usd


class _Offsets:
    """Per partition, the offset the group may commit: the oldest event still in flight,
    else one past the last event taken."""

    def __init__(self) -> None:
        self._in_flight: dict[int, set[int]] = {}
        self._next: dict[int, int] = {}

    def take(self, partition: int, offset: int) -> None:
        self._in_flight.setdefault(partition, set()).add(offset)
        self._next[partition] = offset + 1

    def finish(self, partition: int, offset: int) -> None:
        self._in_flight[partition].discard(offset)

    def committable(self) -> dict[int, int]:
        return {
            p: min(self._in_flight[p]) if self._in_flight.get(p) else nxt
            for p, nxt in self._next.items()
        }


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    start: datetime | None = None
    end: datetime | None = None
    offsets: dict[int | None, tuple[int | None, int | None]] | None = None
    shadow_topic: str | None = None
    group: str | None = None
    concurrency: int = 20
    quota_share: float = 0.25
    max_usd: float | None = None
    progress_s: float = 2.0


def replay(
    settings: Settings,
    candidate: Topology,
    options: ReplayOptions,
    report: Callable[[Progress], None] = lambda progress: None,
) -> Progress:
    """Run the replay to the end of its range (or its budget); returns what it did."""
    topic = options.shadow_topic or shadow_topic(candidate)
    problem = shadow_topic_problem(topic, set(candidate.topics), settings.orgdata_topic_prefix)
    if problem:
        raise LlmflowError(problem)
    servers = settings.kafka_bootstrap_servers
    partitions = partition_counts(servers, [candidate.input_topic]).get(candidate.input_topic)
    if partitions is None:
        raise LlmflowError(f"the input topic {candidate.input_topic!r} does not exist")
    ensure_topics(servers, [topic], settings.topic_partitions, settings.topic_replication_factor)
    ensure_topics(servers, [f"{topic}.state"], 1, settings.topic_replication_factor, COMPACTED)
    orgdata, follower = org_data(settings, [candidate])
    try:
        run = _Replay(settings, candidate, options, topic, orgdata, report)
        return asyncio.run(run.run(partitions))
    finally:
        follower.stop()
        orgdata.close()


class _Replay:
    def __init__(
        self,
        settings: Settings,
        candidate: Topology,
        options: ReplayOptions,
        topic: str,
        orgdata: Any,
        report: Callable[[Progress], None],
    ) -> None:
        self.settings = settings
        self.candidate = candidate
        self.options = options
        self.topic = topic
        self.orgdata = orgdata
        self.report = report
        self.progress = Progress(candidate.name, candidate.version, topic)
        self.offsets = _Offsets()
        self.live_spend = SpendView()
        self.budgets = ShadowBudgets(settings.budgets, self.live_spend, options.max_usd)

    async def run(self, partitions: int) -> Progress:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from llmflow.services.worker.bootstrap import build_pipeline, model_client, outage_gate

        settings, options = self.settings, self.options
        servers = settings.kafka_bootstrap_servers
        group = options.group or replay_group(self.candidate, options)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=servers,
            **client_options(),
            group_id=group,
            enable_auto_commit=False,
            max_poll_records=max(1, options.concurrency),
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=servers,
            **client_options(),
            acks="all",
            max_request_size=settings.max_record_bytes,
        )
        metrics = Metrics(settings.labelled_tenants())
        models = model_client(settings.models_config(), metrics.models)
        models.quotas.set_share(options.quota_share)
        executor = ThreadPoolExecutor(settings.image_threads, thread_name_prefix="images")
        await producer.start()
        await consumer.start()
        state = ReplayState(producer, f"{self.topic}.state", owner=group)
        gate = outage_gate(settings, self.candidate.name, models, metrics)
        follow = asyncio.create_task(self._follow_live_spend(consumer))
        try:
            await state.load(servers)
            pipeline = build_pipeline(
                settings,
                self.candidate,
                models=models,
                orgdata=self.orgdata,
                executor=executor,
                paid=state,
                budgets=self.budgets,
                worker_id=f"replay:{settings.worker_id}",
            )
            ranges = await resolve(
                consumer,
                self.candidate.input_topic,
                partitions,
                start=options.start,
                end=options.end,
                offsets=options.offsets,
            )
            await self._read(consumer, producer, pipeline, state, gate, ranges)
        finally:
            follow.cancel()
            with contextlib.suppress(BaseException):
                await follow
            await gate.close()
            await consumer.stop()
            await producer.stop()
            await models.close()
            executor.shutdown(wait=False, cancel_futures=True)
        self.report(self.progress)
        return self.progress

    async def _follow_live_spend(self, consumer: Any) -> None:
        """The live topology's spend, for tenant budgets (its faust table's changelog)."""
        if not self.settings.budgets:
            return
        changelog = f"{self.settings.app_id}-{self.candidate.name}-spend-changelog"
        while not (partitions := consumer.partitions_for_topic(changelog)):
            await consumer.topics()  # refreshes metadata: the topic comes with the live worker
            await asyncio.sleep(1.0)
        await follow_changelog(
            self.settings.kafka_bootstrap_servers, changelog, len(partitions), self.live_spend
        )

    async def _read(
        self,
        consumer: Any,
        producer: Any,
        pipeline: Pipeline,
        state: ReplayState,
        gate: OutageGate,
        ranges: list[PartitionRange],
    ) -> None:
        from aiokafka import TopicPartition

        topic = self.candidate.input_topic
        wanted = {r.partition: r for r in ranges if r.size}
        self.progress.total = sum(r.size for r in wanted.values())
        tps = {p: TopicPartition(topic, p) for p in wanted}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            committed = await consumer.committed(tp)
            start = wanted[p].start
            if committed is not None and start <= committed <= wanted[p].end:
                self.progress.done += committed - start  # finished by an earlier run
                self.progress.resumed += committed - start
                start = committed
            consumer.seek(tp, start)
            if start >= wanted[p].end:
                consumer.pause(tp)
        slots = asyncio.Semaphore(self.options.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        failed: list[BaseException] = []

        def finished(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            error = None if task.cancelled() else task.exception()
            if error is not None:
                failed.append(error)

        reading = {p for p, tp in tps.items() if tp not in consumer.paused()}

        async def tick() -> None:
            """Commits and progress on their own: the reading loop may wait long for a
            slot (a model outage) without holding them back."""
            last_report = time.monotonic()
            while True:
                await asyncio.sleep(1.0)
                await self._commit(consumer, state, tps)
                if time.monotonic() - last_report >= self.options.progress_s:
                    self.report(self.progress)
                    last_report = time.monotonic()

        ticker = asyncio.create_task(tick())
        try:
            while reading or tasks:
                if reading and not self.budgets.exhausted:
                    batches = await consumer.getmany(timeout_ms=200)
                    for tp, records in batches.items():
                        for record in records:
                            if record.offset >= wanted[tp.partition].end:
                                break
                            await slots.acquire()
                            if self.budgets.exhausted:  # spent while waiting for a slot
                                slots.release()
                                break  # not taken: read again by the next run
                            self.offsets.take(tp.partition, record.offset)
                            task = asyncio.create_task(
                                self._one(record, producer, pipeline, state, gate, slots)
                            )
                            tasks.add(task)
                            task.add_done_callback(finished)
                    for p in list(reading):  # offsets may have gaps: look where it stands
                        if await consumer.position(tps[p]) >= wanted[p].end:
                            consumer.pause(tps[p])
                            reading.discard(p)
                else:
                    if self.budgets.exhausted and not self.progress.stopped:
                        self.progress.stopped = (
                            f"the replay's budget of ${self.options.max_usd} is spent (with "
                            "what was in flight); run it again to go on: --max-usd caps each run"
                        )
                        reading.clear()
                    if tasks:
                        await asyncio.wait(tasks, timeout=0.2)
                if failed:  # publishing failed for good, or a bug: end, uncommitted (redone)
                    raise failed[0]
                if ticker.done():
                    ticker.result()  # committing failed: end, as a failed event does
        finally:
            ticker.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(ticker, *tasks, return_exceptions=True)
        await self._commit(consumer, state, tps)
        if not self.progress.stopped:
            # Read to the end of the range: every record in it is done. Offsets the total
            # counted may hold no record (transaction markers, compacted records).
            self.progress.total = self.progress.done

    async def _commit(self, consumer: Any, state: ReplayState, tps: dict[int, Any]) -> None:
        committable = self.offsets.committable()
        if committable:
            await consumer.commit({tps[p]: offset for p, offset in committable.items()})
            for p, offset in committable.items():
                await state.forget_below(p, offset)

    async def _one(
        self,
        record: Any,
        producer: Any,
        pipeline: Pipeline,
        state: ReplayState,
        gate: OutageGate,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            if state.done(record.partition, record.offset):
                self.progress.resumed += 1
            else:
                position.set((record.partition, record.offset))
                meta = SourceMeta(
                    record.topic, record.partition, record.offset, len(record.key or b"")
                )
                result = await handle_through_outages(
                    pipeline, record.value, meta, gate, self.settings.outage_max_holds
                )
                headers = [(SHADOW_HEADER, self.candidate.version.encode())]
                value = result.model_dump_json().encode()
                delivery = await producer.send(
                    self.topic, key=record.key, value=value, headers=headers
                )
                await delivery
                await state.mark_done(record.partition, record.offset)
                self._count(result)
            self.progress.done += 1
            self.offsets.finish(record.partition, record.offset)
        finally:
            slots.release()

    def _count(self, result: Result) -> None:
        progress = self.progress
        if isinstance(result, Output):
            progress.outputs += 1
            for call in result.calls:
                if call.reused:
                    progress.calls_reused += 1
                else:
                    progress.calls_paid += 1
        elif isinstance(result, DeadLetter):
            progress.dead_letters += 1
        else:
            progress.parked += 1
        progress.cost_usd = self.budgets.spent
