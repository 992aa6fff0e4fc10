"""A topology's shadow: its candidate version, run beside it on a sampled share of the events.

The candidate runs on its own, next to the live version: the live event neither waits for
it nor fails with it, and is committed when its own result is published. The shadow's
result (output, dead letter or parked event alike) goes to the shadow topic only. At most
`max_in_flight` shadowed events run at once; an event picked while they all run is not
shadowed (counted as `busy`), so a slow or failing candidate costs shadow samples, never
live throughput. A shadow is a sample: one in flight when the worker stops or crashes is
lost, and an event redelivered after a crash may be shadowed (and paid) again. It spends
within its own budget, shared by the group through the spend table under the name
`shadow:<name>:<version>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from llmflow.schemas.outputs import Output
from llmflow.services.worker import tracing
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.pipeline import EndpointDown, Pipeline, SourceMeta
from llmflow.services.worker.ports import Budgets, OverBudget

log = logging.getLogger(__name__)

SHADOW_HEADER = "llmflow.shadow"
"""Header of every shadow record: the candidate's version."""


def shadow_topic_problem(topic: str, taken: set[str], orgdata_prefix: str) -> str | None:
    """Why a shadow may not write to `topic` (None: it may): a topic a topology reads or
    writes, an org-data table, or one of Kafka's own."""
    if topic in taken:
        return f"shadow topic {topic!r} is a topic a topology reads or writes"
    if orgdata_prefix and topic.startswith(orgdata_prefix):
        return f"shadow topic {topic!r} is an org-data table's topic ({orgdata_prefix}*)"
    if topic.startswith("__"):
        return f"shadow topic {topic!r} is one of Kafka's own (__*)"
    return None


def sampled(value: bytes | None, share: float) -> bool:
    """Whether the record is in the `share` of events shadowed: decided by its bytes, so a
    redelivered event is decided alike, and about `share` of distinct events are picked."""
    digest = hashlib.sha256(value or b"").digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


class ShadowBudget:
    """Every event's spend counts against one budget, the shadow's (`label`), whatever its
    tenant: `Budgets` keyed by tenant (the worker's spend table) under that one name."""

    def __init__(self, budgets: Budgets, label: str) -> None:
        self._budgets = budgets
        self.label = label

    def over_budget(self, tenant: str) -> OverBudget | None:
        return self._budgets.over_budget(self.label)

    def charge(self, tenant: str, cost_usd: float) -> None:
        self._budgets.charge(self.label, cost_usd)


class ShadowRun:
    """Runs the candidate's pipeline on sampled records and publishes to `sink`."""

    def __init__(
        self,
        pipeline: Pipeline,
        sink: Any,
        share: float,
        budget: ShadowBudget | None,
        metrics: Metrics,
        max_in_flight: int = 20,
    ) -> None:
        self.pipeline = pipeline
        self._sink = sink
        self._share = share
        self._budget = budget
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._running: set[asyncio.Task[None]] = set()
        topology = pipeline.topology
        self._labels = (topology.name, topology.version)

    def sampled(self, value: bytes | None) -> bool:
        return sampled(value, self._share)

    def offer(self, value: bytes | None, key: bytes | None, meta: SourceMeta) -> None:
        """Shadow the record if it is picked and a slot is free; returns at once."""
        if not self.sampled(value):
            return
        if len(self._running) >= self._max_in_flight:
            self._metrics.shadow_events.labels(*self._labels, "busy").inc()
            return
        task = asyncio.create_task(self.run(value, key, meta))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def drain(self) -> None:
        """Wait for the shadowed events still running (tests, and a stop that can wait)."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def close(self) -> None:
        """Cancel what still runs: a stopping worker does not wait for its samples."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*list(self._running), return_exceptions=True)

    async def run(self, value: bytes | None, key: bytes | None, meta: SourceMeta) -> None:
        """Answer the record with the candidate and publish the result; never raises (but
        `CancelledError`): the live event must not pay for its shadow."""
        outcome = "failed"
        try:
            if self._budget is not None and self._budget.over_budget(self._budget.label):
                outcome = "over_budget"
                return
            # A span of its own, in the live event's trace: the shadow's failures are not
            # the live event's.
            tracer = self.pipeline.tracer
            with tracing.span(tracer, f"shadow {self._labels[0]}") as span:
                span.set_attribute("llmflow.topology.version", self._labels[1])
                try:
                    result = await self.pipeline.handle(value, meta)
                except EndpointDown:
                    outcome = "endpoint_down"  # the live version waits for it; not the shadow
                    return
                tracing.end_event(span, result)
                headers = {
                    **tracing.trace_headers(tracer, None),
                    SHADOW_HEADER: self.pipeline.topology.version.encode(),
                }
                payload = result.model_dump_json().encode()
                await (await self._sink.send(key=key, value=payload, headers=headers))
            outcome = result.record_type
            if isinstance(result, Output):
                cost = sum(call.cost_usd for call in result.model_calls if not call.reused)
                self._metrics.shadow_cost.labels(*self._labels).inc(cost)
        except Exception:
            log.exception(
                "shadow %s v%s: record %s[%d]@%d not shadowed",
                *self._labels,
                meta.topic,
                meta.partition,
                meta.offset,
            )
        finally:
            self._metrics.shadow_events.labels(*self._labels, outcome).inc()
