"""Outages pause a topology instead of dead-lettering its events.

When a model endpoint is down (unreachable, 5xx, 429 or timeouts past every retry, a key
it rejects), the event that found out is not at fault. Its agent waits at the topology's
`OutageGate` with the event unacked; the other agent instances of the topology join it
with their next event (their calls fail at once on the open circuit, at no cost), and
then the topology takes no more events: faust's stream buffer is bounded, so it stops
fetching. The worker keeps its group membership and its partitions, the events stay in
Kafka. The gate probes the endpoints every few seconds; once one answers it closes their
circuits and every waiting agent retries its event. A metric and a log line say that the
topology is paused, and why.

The partitions are deliberately not paused through faust's `pause_partitions`: records
already fetched for a partition paused mid-batch are dropped by faust's fetch loop, never
acked, and the partition's commits stop at them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import Gauge

from llmflow.services.models.probe import ProbeResult
from llmflow.services.worker import tracing
from llmflow.services.worker.pipeline import EndpointDown, Pipeline, Result, SourceMeta

log = logging.getLogger(__name__)

Probe = Callable[[str], Awaitable[ProbeResult]]


class OutageGate:
    """Open while the endpoints a topology needs answer; `hold` waits while they do not."""

    def __init__(
        self,
        topology: str,
        *,
        probe: Probe,
        reset_circuits: Callable[[tuple[str, ...]], None],
        paused_gauge: Gauge,
        interval_s: float = 2.0,
    ) -> None:
        self._topology = topology
        self._probe = probe
        self._reset_circuits = reset_circuits
        self._gauge = paused_gauge.labels(topology)
        self._interval_s = interval_s
        self._open = asyncio.Event()
        self._open.set()
        self._probing: asyncio.Task[None] | None = None
        self._endpoints: set[str] = set()

    @property
    def topology(self) -> str:
        return self._topology

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    async def hold(self, reason: str, endpoints: tuple[str, ...]) -> None:
        """Wait until one of `endpoints` answers again; pauses the topology meanwhile."""
        self._endpoints.update(endpoints or ("default",))
        if not self.paused:
            self._open.clear()
            self._gauge.set(1)
            log.warning(
                "%s: paused, model endpoint %s is down: %s",
                self._topology,
                "/".join(sorted(self._endpoints)),
                reason,
            )
            self._probing = asyncio.create_task(self._probe_until_up(time.monotonic()))
        await self._open.wait()

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()

    async def _probe_until_up(self, since: float) -> None:
        last = ""
        while True:
            await asyncio.sleep(self._interval_s)
            endpoints = tuple(sorted(self._endpoints))
            results = await asyncio.gather(*(self._probe(e) for e in endpoints))
            if any(r.ok for r in results):
                break
            reasons = "; ".join(f"{e}: {r.reason}" for e, r in zip(endpoints, results, strict=True))
            if reasons != last:
                log.warning("%s: still paused: %s", self._topology, reasons)
                last = reasons
        self._reset_circuits(endpoints)
        self._endpoints.clear()
        self._gauge.set(0)
        self._open.set()
        log.warning(
            "%s: resumed after %.1f s, the model endpoint answers again",
            self._topology,
            time.monotonic() - since,
        )


async def handle_through_outages(
    pipeline: Pipeline,
    value: bytes | None,
    meta: SourceMeta,
    gate: OutageGate | None,
    max_holds: int,
) -> Result:
    """`pipeline.handle`, waiting at `gate` each time the event finds a model endpoint down
    and trying again once it answers; after `max_holds` such waits (or without a gate) the
    event's dead letter (an event that fails on an endpoint that answers everyone else is,
    after all, the event's fault)."""
    holds = 0
    while True:
        try:
            return await pipeline.handle(value, meta)
        except EndpointDown as down:
            if gate is None or holds >= max_holds:
                tracing.record_failure(down, down.dead_letter)
                return down.dead_letter
            holds += 1
            await gate.hold(down.reason, down.endpoints)
