"""Faust wiring: one thin agent per topology. Decode, hand to the pipeline, publish, ack.

The agent publishes the result (output, dead letter or parked event) and waits for the
broker's ack before it takes the next event, so an offset is only committed for events
whose result is durable. `concurrency` agent instances share each topic: that many events
are in flight at once, and the stream buffer holds no more than that many besides, so a
worker waiting on its model quota stops fetching instead of piling events up in memory.

Kafka redelivers events after a rebalance or a crash when their offsets were not yet
committed (faust-streaming drops the acks of revoked partitions before its last commit).
Each topology therefore keeps two tables, changelogged and co-partitioned with its input:
`answered` (per partition, the offsets of records whose result is published: a redelivered
record is skipped) and `paid` (per event, its answers by call id: a redelivered event
reuses every answer it already paid for and calls only what is missing).

The pipeline turns every failure of an event into a dead letter. Should anything still
escape the agent (a bug here, or publishing failing for good), the worker logs it and exits
at once with status 70, before faust can ack the event: the event is redelivered to the
worker that takes over its partition instead of being lost.

This module declares things the way faust wants them; `bootstrap` decides what they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.services.broker.security import kafka_security
from llmflow.services.models.quotas import QuotaRegistry, share_of
from llmflow.services.worker import tracing
from llmflow.services.worker.budgets import SpendView, follow_changelog
from llmflow.services.worker.commits import commit_only_what_was_acked
from llmflow.services.worker.flow import fetch_as_soon_as_drained
from llmflow.services.worker.health import GroupMembership, Readiness, health_app, serve
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.outage import OutageGate, handle_through_outages
from llmflow.services.worker.pipeline import Pipeline, Result, SourceMeta
from llmflow.services.worker.ports import AnsweredMarks
from llmflow.services.worker.projection import project
from llmflow.services.worker.settings import Settings
from llmflow.services.worker.shadow import ShadowRun
from llmflow.services.worker.state import (
    CHANGELOG_CONFIG,
    Committed,
    SpendTable,
    TableAnsweredMarks,
)
from llmflow.topologies.spec import Topology

log = logging.getLogger(__name__)

EXIT_EVENT_UNHANDLED = 70  # EX_SOFTWARE: an event escaped its error boundary


def create_app(settings: Settings) -> faust.App:
    """The faust app of one worker, with nothing declared on it yet."""
    commit_only_what_was_acked()
    fetch_as_soon_as_drained()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=kafka_security().faust_credentials(),
        datadir=str(settings.data_dir / "faust"),
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Results must fit what the broker takes; the pipeline sizes them to this limit.
        producer_max_request_size=settings.max_record_bytes,
        stream_buffer_maxsize=settings.concurrency,
        # Never kill an agent for a slow model: calls carry their own deadlines.
        stream_processing_timeout=max(300.0, settings.retry.deadline_s * 2),
        # A crashed worker's partitions move on after the session timeout (faust waits
        # 60 s by default); a static member restarted within it takes them back at once.
        consumer_group_instance_id=settings.instance_id,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 5,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
    )


@dataclass(frozen=True, slots=True)
class Tables:
    """A topology's state tables, co-partitioned with its input topic."""

    answered: Any
    """Per partition, offsets of records whose result is published, until committed."""
    paid: Any
    """Per event (partition:offset), its answers by call id, until it is answered."""
    spend: Any
    """Spend per (tenant, period, partition)."""

    @property
    def spend_changelog(self) -> str:
        return str(self.spend.changelog_topic.get_topic_name())

    @property
    def changelogs(self) -> list[str]:
        return [
            str(t.changelog_topic.get_topic_name()) for t in (self.answered, self.paid, self.spend)
        ]


def declare_tables(app: faust.App, topology: Topology, partitions: int) -> Tables:
    """`partitions` is the input topic's partition count. No defaults on `answered` and
    `paid`: a missing key must read as missing (`state` keeps both bounded)."""
    return Tables(
        answered=app.Table(
            f"{topology.name}-answered", partitions=partitions, extra_topic_configs=CHANGELOG_CONFIG
        ),
        paid=app.Table(
            f"{topology.name}-paid", partitions=partitions, extra_topic_configs=CHANGELOG_CONFIG
        ),
        spend=app.Table(f"{topology.name}-spend", default=float, partitions=partitions),
    )


def committed_offsets(app: faust.App, topic: str) -> Committed:
    """The consumer's last committed offset of a partition of `topic` (None before the
    first commit). faust keeps it in `Consumer._committed_offset`; no public accessor."""

    def committed(partition: int) -> int | None:
        offsets = getattr(app.consumer, "_committed_offset", None)
        return None if offsets is None else offsets.get(TP(topic, partition))

    return committed


def add_agent(
    app: faust.App,
    pipeline: Pipeline,
    answered: AnsweredMarks,
    metrics: Metrics,
    concurrency: int,
    gate: OutageGate | None = None,
    max_holds: int = 5,
    shadow: Callable[[Any], ShadowRun] | None = None,
) -> None:
    """The topology's agent: `concurrency` instances share its input topic. `shadow` makes
    the topology's shadow run from the faust topic of its results."""
    topology = pipeline.topology
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    raw |= {"key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(topology.input_topic, **raw)
    sinks = _Sinks(
        app.topic(topology.output_topic, **raw),
        app.topic(topology.dead_letter_topic, **raw),
        app.topic(topology.parked, **raw),
        {route.name: app.topic(route.topic, **raw) for route in topology.routes},
        {route.name: route.fields for route in topology.routes if route.fields},
    )
    runner = None
    if shadow is not None and topology.shadow_topic is not None:
        runner = shadow(app.topic(topology.shadow_topic, **raw))
    app.agent(source, name=f"llmflow.{topology.name}", concurrency=concurrency)(
        agent_body(pipeline, answered, metrics, sinks, gate, max_holds, runner)
    )


def agent_body(
    pipeline: Pipeline,
    answered: AnsweredMarks,
    metrics: Metrics,
    sinks: _Sinks,
    gate: OutageGate | None = None,
    max_holds: int = 5,
    shadow: ShadowRun | None = None,
) -> Callable[[faust.StreamT[bytes]], AsyncIterator[None]]:
    """The agent function of a topology: each event answered, published and recorded.

    An event that finds a model endpoint down waits at the `gate` and is tried again
    once the endpoint answers; after `max_holds` such waits it is dead-lettered (an event
    that fails on an endpoint that answers everyone else is, after all, the event's fault).
    A sampled event is also answered by the `shadow` candidate, on its own (see `shadow`).
    Each event has a span (with the pipeline's tracer), and its results carry the trace
    context (see `tracing`).
    """
    name = pipeline.topology.name
    tracer = pipeline.tracer
    # Records being answered, by place. A rebalance that leaves a partition with this worker
    # seeks it back to its commit while records read before may still be in flight, so the
    # same record can come twice at once: the second copy waits for the first, then finds
    # it answered, instead of paying for its calls again.
    in_flight: dict[tuple[str, int, int], asyncio.Event] = {}

    async def answer(value: bytes | None, message: Any) -> bool:
        """Handle one record; False when it was answered before and is skipped."""
        metrics.events_in.labels(name).inc()
        place = (message.topic, message.partition, message.offset)
        while (first := in_flight.get(place)) is not None:
            metrics.copies_waited.labels(name).inc()
            await first.wait()
        in_flight[place] = done = asyncio.Event()
        try:
            return await answer_once(value, message)
        finally:
            del in_flight[place]
            done.set()

    async def answer_once(value: bytes | None, message: Any) -> bool:
        if answered.seen(message.partition, message.offset):
            metrics.redeliveries_skipped.labels(name).inc()
            log.info(
                "skipping redelivered record %s:%s of %s",
                message.partition,
                message.offset,
                message.topic,
            )
            return False
        key = message.key
        meta = SourceMeta(message.topic, message.partition, message.offset, len(key or b""))
        metrics.in_flight.labels(name).inc()
        with tracing.event_span(tracer, pipeline.topology, message) as span:
            if shadow is not None:
                shadow.offer(value, key, meta)  # runs on its own: the event never waits for it
            try:
                result = await handle_through_outages(pipeline, value, meta, gate, max_holds)
                tracing.end_event(span, result)
                with tracing.publish_span(tracer, result, message.headers) as headers:
                    await _publish(result, key, sinks, headers)
            finally:
                metrics.in_flight.labels(name).dec()
            await answered.mark(message.partition, message.offset)  # durable before the ack
        _count(metrics, name, result, message.timestamp)
        return True

    async def process(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            try:
                answered_now = await answer(event.value, event.message)
            except Exception as exc:
                # Not `raise`: faust acks an event even when the agent raises on it
                # (faust-streaming issue #315), so the offset would be committed and the
                # event lost. Exiting now, before control goes back to the stream, leaves
                # it unacked: uncommitted, it is redelivered. CancelledError (shutdown,
                # rebalance) is a BaseException and goes through.
                exit_unacked(name, event.message, exc)
            if answered_now:
                yield None

    return process


def exit_unacked(topology: str, message: Any, exc: BaseException) -> NoReturn:
    """Log what escaped with where its event is, flush the logs, and end the process at once
    (status 70): no `await` in between, so nothing can ack or commit the event's offset."""
    try:
        log.critical(
            "%s: the event at %s[%s]@%s could not be answered; exiting with status %d so "
            "that it is redelivered instead of lost",
            topology,
            getattr(message, "topic", "?"),
            getattr(message, "partition", "?"),
            getattr(message, "offset", "?"),
            EXIT_EVENT_UNHANDLED,
            exc_info=exc,
        )
        _flush_logs()
    finally:
        os._exit(EXIT_EVENT_UNHANDLED)


def _flush_logs() -> None:
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            with contextlib.suppress(Exception):  # exiting anyway
                handler.flush()
        logger = logger.parent if logger.propagate else None
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def divide_quotas_on_rebalance(
    app: faust.App, quotas: QuotaRegistry, metrics: Metrics, inputs: dict[str, int]
) -> None:
    """Each worker takes the share of the group's quotas that matches its share of the
    input partitions (`inputs`: topic -> partition count): 0 while partitions are revoked,
    the new share once assigned."""
    total = sum(inputs.values())

    def apply(owned: int) -> None:
        share = share_of(owned, total)
        quotas.set_share(share)
        metrics.quota_share.set(share)
        log.info("quota share %.3f (%d of %d input partitions)", share, owned, total)

    async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        apply(0)

    async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        owned = sum(1 for tp in app.consumer.assignment() if tp.topic in inputs)
        apply(owned)

    app.on_partitions_revoked.connect(revoked)
    app.on_partitions_assigned.connect(assigned)


def track_membership(app: faust.App, membership: GroupMembership) -> None:
    """`membership` holds while the worker's partitions are assigned (none counts too)."""

    async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        membership.assigned = False

    async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        membership.assigned = True

    app.on_partitions_revoked.connect(revoked)
    app.on_partitions_assigned.connect(assigned)


def serve_http(
    app: faust.App, registry: CollectorRegistry, readiness: Readiness, host: str, port: int
) -> None:
    """`/metrics`, `/healthz` and `/readyz` from the worker's own event loop (`health`)."""

    async def run() -> None:
        runner = await serve(health_app(registry, readiness), host, port)
        try:
            await asyncio.Event().wait()  # until the worker stops (the task is cancelled)
        finally:
            await runner.cleanup()

    app.task(run)


def reread_marks_on_rebalance(app: faust.App, marks: list[TableAnsweredMarks]) -> None:
    """Partitions may come back with marks written by another owner meanwhile."""

    async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        for topology_marks in marks:
            topology_marks.forget_partitions()

    app.on_partitions_assigned.connect(assigned)


def flush_spend(app: faust.App, tables: list[SpendTable], interval_s: float) -> None:
    """Write each table's changed spend every `interval_s`, and all of it before partitions
    are revoked (faust sends the signal once the events in flight are done, before the
    worker rejoins the group): the next owner of a partition recovers its every total."""

    async def every_interval() -> None:
        await asyncio.gather(*(table.flush_every(interval_s) for table in tables))

    async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        for table in tables:
            try:
                await table.flush()
            except Exception as exc:  # not a crash: the next flush tries again
                log.warning("spend: not written before the rebalance (%r)", exc)

    app.task(every_interval)
    app.on_partitions_revoked.connect(revoked)


def follow_spend(
    app: faust.App, bootstrap_servers: str, view: SpendView, changelogs: dict[str, int]
) -> None:
    """Keep `view` up to date from the spend changelogs (topic -> partition count)."""

    async def follow() -> None:
        await asyncio.gather(
            *(
                follow_changelog(bootstrap_servers, topic, count, view)
                for topic, count in changelogs.items()
            )
        )

    app.task(follow)


def close_on_shutdown(app: faust.App, close: Callable[[], Awaitable[None]]) -> None:
    """Run `close` after the consumer stopped and before the producer's final flush."""

    async def on_shutdown(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await close()

    app.on_before_shutdown.connect(on_shutdown)


def run(app: faust.App, drain_timeout_s: float = 30.0) -> None:
    """Run the worker until it is stopped; exits the process. Logging is the caller's
    (`llmflow.logs`): faust's own setup would replace it with coloured handlers."""
    _Worker(app, drain_timeout_s).execute_from_commandline()


EXIT_DRAIN_TIMEOUT = 75  # EX_TEMPFAIL: stopped before every event in flight was answered


class _Worker(faust.Worker):
    """faust's worker with a bounded stop, without its terminal spinner and without its
    logging setup."""

    def __init__(self, app: faust.App, drain_timeout_s: float = 30.0) -> None:
        # Not faust's logging setup: it installs coloured handlers (colour is decided by
        # whether stdout is a terminal, so a piped stderr gets escape codes too) in a
        # format of its own, and sends print() to the log.
        super().__init__(app, quiet=True, override_logging=False)
        self.drain_timeout_s = drain_timeout_s
        # The spinner writes cursor escape codes to stdout even when it is not a terminal,
        # and once it spins it turns the root logger to DEBUG (every debug record of
        # aiokafka, openai and faust built and dropped: about a tenth of the CPU).
        self.spinner = None

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        """On SIGTERM/SIGINT faust waits for every event in flight, however long its model
        calls or an outage take. Past `drain_timeout_s` the process ends anyway: what is
        unfinished is not committed, so it is redelivered, not lost."""
        if not self._signal_stop_time:
            timer = threading.Timer(self.drain_timeout_s, _drain_expired, [self.drain_timeout_s])
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signal)


def _drain_expired(timeout_s: float) -> None:
    log.critical(
        "stop: events still in flight after %g s (LLMFLOW_DRAIN_TIMEOUT_S); exiting with "
        "status %d without committing them, they will be redelivered",
        timeout_s,
        EXIT_DRAIN_TIMEOUT,
    )
    _flush_logs()
    os._exit(EXIT_DRAIN_TIMEOUT)


def _count(metrics: Metrics, topology: str, result: Result, record_timestamp: float) -> None:
    if isinstance(result, Output):
        metrics.outputs.labels(topology).inc()
        for route in result.routes:
            metrics.routed.labels(topology, route).inc()
        for call in result.model_calls:  # the retrieval query's embedding too
            if call.reused:
                metrics.models.calls.labels(call.model, call.endpoint, "reused").inc()
            else:
                tenant = metrics.tenant(result.tenant or result.event_key)
                metrics.cost.labels(call.model, tenant).inc(call.cost_usd)
    elif isinstance(result, DeadLetter):
        metrics.dead_letters.labels(topology, result.stage).inc()
    else:
        metrics.parked.labels(topology).inc()
    metrics.event_seconds.labels(topology).observe(max(0.0, time.time() - record_timestamp))


@dataclass(frozen=True, slots=True)
class _Sinks:
    outputs: Any
    dead_letters: Any
    parked: Any
    routes: dict[str, Any] = field(default_factory=dict)
    """Route name -> its topic."""
    projections: dict[str, dict[str, str]] = field(default_factory=dict)
    """Route name -> the fields it sends instead of the whole output."""


def _routed(output: Output, route: str, fields: dict[str, str] | None) -> bytes | None:
    """The projection a route sends instead of the output (None: the output itself)."""
    return project(output, route, fields).model_dump_json().encode() if fields else None


async def _publish(
    result: Result, key: bytes | None, sinks: _Sinks, trace: dict[str, bytes]
) -> None:
    """Send `result` (and its routed copies), each record with the `trace` headers."""
    value = result.model_dump_json().encode()
    if isinstance(result, Output):
        # Routed copies first: every record is acked before the offset can commit, and
        # one lost in a crash is sent again with the output (consumers dedupe by event id).
        routed = [
            await sinks.routes[name].send(
                key=key,
                value=_routed(result, name, sinks.projections.get(name)) or value,
                headers={**trace, "llmflow.route": name.encode()},
            )
            for name in result.routes
        ]
        delivery = await sinks.outputs.send(key=key, value=value, headers=trace or None)
        for copy in routed:
            await copy
    elif isinstance(result, DeadLetter):
        log.warning(
            "dead letter: event=%s stage=%s kind=%s: %s",
            result.event_id,
            result.stage,
            result.error_kind,
            result.message,
        )
        headers = {
            **trace,
            "llmflow.error.stage": result.stage.encode(),
            "llmflow.error.kind": result.error_kind.encode(),
        }
        delivery = await sinks.dead_letters.send(key=key, value=value, headers=headers)
    else:
        log.info("parked event=%s: %s", result.event_id, result.message)
        headers = {**trace, "llmflow.parked": result.reason.encode()}
        delivery = await sinks.parked.send(key=key, value=value, headers=headers)
    await delivery  # the broker acked the result before this event's offset can commit
