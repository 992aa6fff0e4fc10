"""A topology's shadow: its candidate version, run beside it on a sampled share of the events.

The candidate runs at the same time as the live version, on the same record, and its result
(output, dead letter or parked event alike) goes to the shadow topic only. Nothing of the
shadow can hold up or fail the live event: whatever goes wrong is logged and counted. It
pays once like the live version (its answers are in the same `paid` table, under call ids
of its own version) and spends within its own budget, shared by the group through the
spend table under the name `shadow:<name>:<version>`.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from llmflow.schemas.outputs import Output
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.pipeline import EndpointDown, Pipeline, SourceMeta
from llmflow.services.worker.ports import Budgets, OverBudget

log = logging.getLogger(__name__)

SHADOW_HEADER = "llmflow.shadow"
"""Header of every shadow record: the candidate's version."""


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
    ) -> None:
        self.pipeline = pipeline
        self._sink = sink
        self._share = share
        self._budget = budget
        self._metrics = metrics
        topology = pipeline.topology
        self._labels = (topology.name, topology.version)

    def sampled(self, value: bytes | None) -> bool:
        return sampled(value, self._share)

    async def run(self, value: bytes | None, key: bytes | None, meta: SourceMeta) -> None:
        """Answer the record with the candidate and publish the result; never raises (but
        `CancelledError`): the live event must not pay for its shadow."""
        outcome = "failed"
        try:
            if self._budget is not None and self._budget.over_budget(self._budget.label):
                outcome = "over_budget"
                return
            try:
                result = await self.pipeline.handle(value, meta)
            except EndpointDown:
                outcome = "endpoint_down"  # the live version waits for it; not the shadow
                return
            headers = {SHADOW_HEADER: self.pipeline.topology.version.encode()}
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
