"""The gateway's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "llmflow_gateway_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.events_accepted = Counter(
            "llmflow_gateway_events_accepted",
            "Events acked by the broker, by topic",
            ["topic"],
            registry=self.registry,
        )
        self.publish_seconds = Histogram(
            "llmflow_gateway_publish_seconds",
            "From sending a request's events to the broker's last ack",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.index_results = Gauge(
            "llmflow_gateway_index_results",
            "Results held by the index",
            registry=self.registry,
        )
        self.index_bytes = Gauge(
            "llmflow_gateway_index_bytes",
            "Bytes of the results held by the index",
            registry=self.registry,
        )
        self.stream_clients = Gauge(
            "llmflow_gateway_stream_clients",
            "Streams open now: result streams and console pages",
            registry=self.registry,
        )
        self.pending_events = Gauge(
            "llmflow_gateway_pending_events",
            "Events sent and waiting for the broker's ack",
            registry=self.registry,
        )

    def watch(
        self,
        index_size: Callable[[], float],
        index_bytes: Callable[[], float],
        pending: Callable[[], float],
        clients: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time."""
        self.index_results.set_function(index_size)
        self.index_bytes.set_function(index_bytes)
        self.pending_events.set_function(pending)
        self.stream_clients.set_function(clients)
