"""Prometheus metrics of one worker process (served with its health by `health`)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from llmflow.services.models.metrics import SECONDS_BUCKETS, ModelMetrics
from llmflow.services.worker.lag import ConsumerLag

# Tenants beyond those named share one series each: a label per customer would grow a
# series per key the upstream sends.
OTHER_TENANT = "other"


class Metrics:
    """One registry per worker (tests create several in one process): the events, results
    and budgets of the worker, the metrics of its model calls (`models`) and of the process
    (memory, CPU, open files, garbage collection).

    `tenants` are the tenants that get a `tenant` label of their own (the budgeted ones and
    `LLMFLOW_METRIC_TENANTS`); the rest are counted as `other`.
    """

    def __init__(self, tenants: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tenants = frozenset(tenants)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.models = ModelMetrics(r)
        self.lag = ConsumerLag()
        r.register(self.lag)
        self.events_in = Counter(
            "llmflow_events_in", "Events taken from Kafka.", ["topology"], registry=r
        )
        self.outputs = Counter("llmflow_outputs", "Outputs published.", ["topology"], registry=r)
        self.routed = Counter(
            "llmflow_routed",
            "Outputs also published to a route's topic.",
            ["topology", "route"],
            registry=r,
        )
        self.dead_letters = Counter(
            "llmflow_dead_letters", "Dead letters published.", ["topology", "stage"], registry=r
        )
        self.parked = Counter(
            "llmflow_parked", "Events parked (tenant over budget).", ["topology"], registry=r
        )
        self.redeliveries_skipped = Counter(
            "llmflow_redeliveries_skipped",
            "Redelivered records skipped because they were answered already.",
            ["topology"],
            registry=r,
        )
        self.copies_waited = Counter(
            "llmflow_record_copies_waited",
            "Records read again while their first copy was still being answered (after a "
            "rebalance's seek): the copy waited for the first instead of calling the models.",
            ["topology"],
            registry=r,
        )
        self.cost = Counter(
            "llmflow_cost_usd", "Cost of model calls in USD.", ["model", "tenant"], registry=r
        )
        self.shadow_events = Counter(
            "llmflow_shadow_events",
            "Events the shadow candidate ran on, by outcome (output, dead_letter, parked, "
            "over_budget, endpoint_down, failed).",
            ["topology", "version", "outcome"],
            registry=r,
        )
        self.shadow_cost = Counter(
            "llmflow_shadow_cost_usd",
            "What the shadow candidate's model calls cost, in USD (not in llmflow_cost_usd).",
            ["topology", "version"],
            registry=r,
        )
        # An event takes a little longer than its calls: shared buckets keep them comparable.
        self.event_seconds = Histogram(
            "llmflow_event_seconds",
            "From the record's Kafka timestamp to its result being acked.",
            ["topology"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "llmflow_in_flight_events", "Events being processed.", ["topology"], registry=r
        )
        self.paused = Gauge(
            "llmflow_topology_paused",
            "1 while the topology waits for a model endpoint that is down.",
            ["topology"],
            registry=r,
        )
        self.quota_share = Gauge(
            "llmflow_quota_share_ratio",
            "Share of the group's model quotas this worker holds.",
            registry=r,
        )

    def tenant(self, tenant: str) -> str:
        """The `tenant` label of `tenant` (as budgets name it: the event's tenant, else its
        key): its name when configured, else `other`."""
        return tenant if tenant in self.tenants else OTHER_TENANT
