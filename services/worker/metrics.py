"""Prometheus metrics of one worker process, served over HTTP by prometheus-client."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Model calls take 50 ms to a minute; events a little more.
_SECONDS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120)


class Metrics:
    """One registry per worker (tests create several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_in = Counter(
            "llmflow_events_in", "Events taken from Kafka.", ["topology"], registry=r
        )
        self.outputs = Counter("llmflow_outputs", "Outputs published.", ["topology"], registry=r)
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
        self.model_calls = Counter(
            "llmflow_model_calls",
            "Model call attempts by outcome (ok, http_429, timeout, ...; reused = paid before).",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.retries = Counter(
            "llmflow_model_retries", "Retried model call attempts.", ["model", "reason"], registry=r
        )
        self.repairs = Counter(
            "llmflow_structured_repairs",
            "Structured answers that broke their schema, by result of the repair.",
            ["model", "result"],
            registry=r,
        )
        self.fallbacks = Counter(
            "llmflow_fallbacks", "Calls answered by a fallback target.", ["call"], registry=r
        )
        self.tokens = Counter(
            "llmflow_tokens", "Tokens from usage.", ["model", "direction"], registry=r
        )
        self.cost = Counter(
            "llmflow_cost_usd", "Cost of model calls in USD.", ["model", "tenant"], registry=r
        )
        self.call_seconds = Histogram(
            "llmflow_model_call_seconds",
            "Model call latency, retries included.",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.event_seconds = Histogram(
            "llmflow_event_seconds",
            "From the record's Kafka timestamp to its result being acked.",
            ["topology"],
            buckets=_SECONDS,
            registry=r,
        )
        self.in_flight = Gauge(
            "llmflow_in_flight_events", "Events being processed.", ["topology"], registry=r
        )
        self.quota_share = Gauge(
            "llmflow_quota_share",
            "Share of the group's model quotas this worker holds.",
            registry=r,
        )
        self.quota_waiting = Gauge(
            "llmflow_quota_waiting", "Calls waiting for quota.", ["quota"], registry=r
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Serve /metrics from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)
