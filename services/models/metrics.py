"""Prometheus metrics of model calls, on the registry of whoever makes the calls."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Model calls take 50 ms to a minute.
SECONDS_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120)


class ModelMetrics:
    """Calls, retries, hedges, repairs, fallbacks, tokens and latency of model calls."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.calls = Counter(
            "llmflow_model_calls",
            "Model calls by result: ok, failed (after every retry and fallback), reused "
            "(answered before a redelivery, not paid again).",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.attempts = Counter(
            "llmflow_model_attempts",
            "HTTP attempts of model calls by outcome (ok, http_429, timeout, ...): a call "
            "that was retried counts once per attempt.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.retries = Counter(
            "llmflow_model_retries", "Retried model call attempts.", ["model", "reason"], registry=r
        )
        self.hedges = Counter(
            "llmflow_model_hedges",
            "Hedge requests sent for slow attempts, by outcome (won: its answer was kept).",
            ["model", "outcome"],
            registry=r,
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
        self.call_seconds = Histogram(
            "llmflow_model_call_seconds",
            "Model call latency, retries included.",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
