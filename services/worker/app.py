"""Faust wiring: one thin agent per topology. Decode, hand to the pipeline, publish, ack.

The agent publishes the result (output, dead letter or parked event) and waits for the
broker's ack before it takes the next event, so an offset is only committed for events
whose result is durable. `concurrency` agent instances share each topic: that many events
are in flight at once, and the stream buffer holds no more than that many besides, so a
worker waiting on its model quota stops fetching instead of piling events up in memory.

Kafka redelivers events after a rebalance or a crash when their offsets were not yet
committed (faust-streaming drops the acks of revoked partitions before its last commit).
Each topology therefore keeps two tables, changelogged and co-partitioned with its input:
`answered` (partition:offset of records whose result is published: a redelivered record
is skipped) and `paid` (answers by call id: a redelivered event reuses every answer it
already paid for and calls only what is missing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import faust

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.services.images.prepare import ImageLimits
from llmflow.services.orgdata.store import OrgDataStore
from llmflow.services.settings import Settings
from llmflow.services.worker.accounting import SpendView, follow_changelog
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.model_client import ModelClient
from llmflow.services.worker.pipeline import Pipeline, Result, SourceMeta
from llmflow.services.worker.quotas import share_of
from llmflow.services.worker.state import TableBudgets, TablePaidCalls
from llmflow.topologies.spec import Topology

log = logging.getLogger(__name__)

# Redeliveries come seconds to minutes after the first delivery; windows of an hour, kept
# for two, bound the tables' size while covering them with a wide margin.
STATE_WINDOW = timedelta(hours=1)
STATE_EXPIRES = timedelta(hours=2)


class Resources:
    """Clients shared by every agent of one worker, created inside the running event loop."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(settings.image_threads, thread_name_prefix="images")
        self.orgdata = OrgDataStore(settings.orgdata_file)
        self.spend = SpendView()
        self._models: ModelClient | None = None

    @property
    def models(self) -> ModelClient:
        if self._models is None:
            self._models = ModelClient.from_settings(self.settings, self.metrics)
        return self._models

    async def close(self) -> None:
        if self._models is not None:
            await self._models.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.orgdata.close()


def image_limits(settings: Settings, topology: Topology) -> ImageLimits:
    return ImageLimits(
        max_pixels=topology.images.max_pixels,
        max_side=topology.images.max_side,
        file_root=settings.image_root,
        allow_private_hosts=settings.image_allow_private_hosts,
    )


def build_app(
    settings: Settings,
    topologies: list[Topology],
    partitions: dict[str, int],
    metrics: Metrics | None = None,
) -> faust.App:
    """`partitions` maps each input topic to its partition count (for co-partitioned tables)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server}" for server in settings.kafka_bootstrap_servers.split(",")],
        datadir=str(settings.data_dir / "faust"),
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        stream_buffer_maxsize=settings.concurrency,
        # Never kill an agent for a slow model: calls carry their own deadlines.
        stream_processing_timeout=max(300.0, settings.retry.deadline_s * 2),
    )
    resources = Resources(settings, metrics or Metrics())
    inputs = {t.input_topic: partitions[t.input_topic] for t in topologies}
    spend_changelogs = {
        _add_agent(app, settings, resources, topology, partitions[topology.input_topic]): (
            partitions[topology.input_topic]
        )
        for topology in topologies
    }
    _divide_quotas_on_rebalance(app, resources, inputs)
    if settings.budgets:
        _follow_spend(app, settings, resources, spend_changelogs)

    async def close_resources(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await resources.close()

    # Fires after the consumer stopped and before the producer's final flush.
    app.on_before_shutdown.connect(close_resources)
    return app


def _divide_quotas_on_rebalance(
    app: faust.App, resources: Resources, inputs: dict[str, int]
) -> None:
    """Each worker takes the share of the group's quotas that matches its share of the
    input partitions: 0 while partitions are revoked, the new share once assigned."""
    total = sum(inputs.values())

    def apply(owned: int) -> None:
        share = share_of(owned, total)
        resources.models.quotas.set_share(share)
        resources.metrics.quota_share.set(share)
        log.info("quota share %.3f (%d of %d input partitions)", share, owned, total)

    async def revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        apply(0)

    async def assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        owned = sum(1 for tp in app.consumer.assignment() if tp.topic in inputs)
        apply(owned)

    app.on_partitions_revoked.connect(revoked)
    app.on_partitions_assigned.connect(assigned)


def _follow_spend(
    app: faust.App, settings: Settings, resources: Resources, changelogs: dict[str, int]
) -> None:
    async def follow() -> None:
        await asyncio.gather(
            *(
                follow_changelog(settings.kafka_bootstrap_servers, topic, count, resources.spend)
                for topic, count in changelogs.items()
            )
        )

    app.task(follow)


def _add_agent(
    app: faust.App,
    settings: Settings,
    resources: Resources,
    topology: Topology,
    partitions: int,
) -> str:
    """Declare the topology's topics, tables and agent; returns its spend changelog topic."""
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    raw |= {"key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(topology.input_topic, **raw)
    sinks = _Sinks(
        app.topic(topology.output_topic, **raw),
        app.topic(topology.dead_letter_topic, **raw),
        app.topic(topology.parked, **raw),
    )
    answered = app.Table(f"{topology.name}-answered", default=int, partitions=partitions).tumbling(
        STATE_WINDOW, expires=STATE_EXPIRES
    )
    paid = app.Table(f"{topology.name}-paid", default=dict, partitions=partitions).tumbling(
        STATE_WINDOW, expires=STATE_EXPIRES
    )
    spend = app.Table(f"{topology.name}-spend", default=float, partitions=partitions)
    pipeline: Pipeline | None = None
    metrics = resources.metrics
    name = topology.name

    def get_pipeline() -> Pipeline:
        nonlocal pipeline
        if pipeline is None:
            pipeline = Pipeline(
                topology,
                models=resources.models,
                orgdata=resources.orgdata,
                image_limits=image_limits(settings, topology),
                executor=resources.executor,
                worker_id=settings.worker_id,
                paid=TablePaidCalls(paid),
                budgets=TableBudgets(settings.budgets, spend, resources.spend),
            )
        return pipeline

    async def process(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        runner = get_pipeline()
        async for event in stream.events():
            message = event.message
            metrics.events_in.labels(name).inc()
            mark = f"{message.partition}:{message.offset}"
            if mark in answered:  # windowed by the record's own timestamp
                metrics.redeliveries_skipped.labels(name).inc()
                log.info("skipping redelivered record %s of %s", mark, message.topic)
                continue
            meta = SourceMeta(message.topic, message.partition, message.offset)
            metrics.in_flight.labels(name).inc()
            try:
                result = await runner.handle(event.value, meta)
                await _publish(result, message.key, sinks)
            finally:
                metrics.in_flight.labels(name).dec()
            answered[mark] = 1
            _count(metrics, name, result, message.timestamp)
            yield None

    app.agent(source, name=f"llmflow.{name}", concurrency=settings.concurrency)(process)
    return str(spend.changelog_topic.get_topic_name())


def _count(metrics: Metrics, topology: str, result: Result, record_timestamp: float) -> None:
    if isinstance(result, Output):
        metrics.outputs.labels(topology).inc()
        for call in result.calls:
            if call.reused:
                metrics.model_calls.labels(call.model, call.endpoint, "reused").inc()
            else:
                metrics.cost.labels(call.model, result.tenant or result.event_key).inc(
                    call.cost_usd
                )
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


async def _publish(result: Result, key: bytes | None, sinks: _Sinks) -> None:
    value = result.model_dump_json().encode()
    if isinstance(result, Output):
        delivery = await sinks.outputs.send(key=key, value=value)
    elif isinstance(result, DeadLetter):
        log.warning(
            "dead letter: event=%s stage=%s kind=%s: %s",
            result.event_id,
            result.stage,
            result.error_kind,
            result.message,
        )
        headers = {
            "llmflow.error.stage": result.stage.encode(),
            "llmflow.error.kind": result.error_kind.encode(),
        }
        delivery = await sinks.dead_letters.send(key=key, value=value, headers=headers)
    else:
        log.info("parked event=%s: %s", result.event_id, result.message)
        headers = {"llmflow.parked": result.reason.encode()}
        delivery = await sinks.parked.send(key=key, value=value, headers=headers)
    await delivery  # the broker acked the result before this event's offset can commit
