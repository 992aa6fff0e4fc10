"""Faust wiring: one thin agent per topology. Decode, hand to the pipeline, publish, ack.

The agent publishes the output (or dead letter) and waits for the broker's ack before it
takes the next event, so an offset is only committed for events whose result is durable.
`concurrency` agent instances share each topic: that many events are in flight at once.

Kafka redelivers events after a rebalance or a crash when their offsets were not yet
committed (faust-streaming drops the acks of revoked partitions before its last commit).
Each topology therefore keeps an `answered` table, changelogged and co-partitioned with
its input topic: a record whose partition:offset is in it was answered already and is
skipped, so adding or removing workers does not answer an event twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import faust

from schemas.dead_letter import DeadLetter
from schemas.outputs import Output
from services.images.prepare import ImageLimits
from services.orgdata.store import OrgDataStore
from services.settings import Settings
from services.worker.model_client import ModelClient, make_openai_client
from services.worker.pipeline import Pipeline, SourceMeta
from topologies.spec import Topology

log = logging.getLogger(__name__)


class Resources:
    """Clients shared by every agent of one worker, created inside the running event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(settings.image_threads, thread_name_prefix="images")
        self.orgdata = OrgDataStore(settings.orgdata_file)
        self._models: ModelClient | None = None
        self._lock = asyncio.Lock()

    async def models(self) -> ModelClient:
        async with self._lock:
            if self._models is None:
                self._models = ModelClient(make_openai_client(self.settings))
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


# Redeliveries come minutes after the first delivery; windows of an hour, kept for two,
# bound the table's size while covering them with a wide margin.
ANSWERED_WINDOW = timedelta(hours=1)
ANSWERED_EXPIRES = timedelta(hours=2)


def build_app(
    settings: Settings, topologies: list[Topology], partitions: dict[str, int]
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
        # Never kill an agent for a slow model: calls carry their own timeouts.
        stream_processing_timeout=max(300.0, settings.model_timeout_s * 4),
    )
    resources = Resources(settings)
    for topology in topologies:
        _add_agent(app, settings, resources, topology, partitions[topology.input_topic])

    async def close_resources(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        await resources.close()

    # Fires after the consumer stopped and before the producer's final flush.
    app.on_before_shutdown.connect(close_resources)
    return app


def _add_agent(
    app: faust.App,
    settings: Settings,
    resources: Resources,
    topology: Topology,
    partitions: int,
) -> None:
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes}
    raw |= {"key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(topology.input_topic, **raw)
    outputs = app.topic(topology.output_topic, **raw)
    dead_letters = app.topic(topology.dead_letter_topic, **raw)
    answered = app.Table(
        f"{topology.name}-answered",
        default=int,
        partitions=partitions,
    ).tumbling(ANSWERED_WINDOW, expires=ANSWERED_EXPIRES)
    pipeline: Pipeline | None = None

    async def get_pipeline() -> Pipeline:
        nonlocal pipeline
        if pipeline is None:
            pipeline = Pipeline(
                topology,
                models=await resources.models(),
                orgdata=resources.orgdata,
                image_limits=image_limits(settings, topology),
                executor=resources.executor,
                worker_id=settings.worker_id,
            )
        return pipeline

    async def process(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        runner = await get_pipeline()
        async for event in stream.events():
            message = event.message
            mark = f"{message.partition}:{message.offset}"
            if mark in answered:  # windowed by the record's own timestamp
                log.info("skipping redelivered record %s of %s", mark, message.topic)
                continue
            meta = SourceMeta(message.topic, message.partition, message.offset)
            result = await runner.handle(event.value, meta)
            await _publish(result, message.key, outputs, dead_letters)
            answered[mark] = 1
            yield None

    app.agent(source, name=f"llmflow.{topology.name}", concurrency=settings.concurrency)(process)


async def _publish(
    result: Output | DeadLetter, key: bytes | None, outputs: Any, dead_letters: Any
) -> None:
    if isinstance(result, Output):
        delivery = await outputs.send(key=key, value=result.model_dump_json().encode())
    else:
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
        delivery = await dead_letters.send(
            key=key, value=result.model_dump_json().encode(), headers=headers
        )
    await delivery  # the broker acked the result before this event's offset can commit
