"""Request hedging: when an attempt runs past the usual latency, send the same request again.

A few requests hang for minutes while the rest answer in a second; waiting for the attempt
timeout costs the event a minute. `HedgeDelays` keeps the latency of recent successful
attempts per endpoint/model and says when an attempt has run unusually long (a percentile of
them, with a floor); the client then sends the same request, with the same call id, and keeps
whichever answer arrives first (`client.ModelClient`).
"""

from __future__ import annotations

import math
from collections import deque

from pydantic import BaseModel, ConfigDict, Field


class HedgePolicy(BaseModel):
    """When to send a second copy of a slow request (`LLMFLOW_HEDGE`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = False
    """Hedge at all. Off unless asked for: a hedged request may be billed twice, so paying
    for lower tail latency is the deployment's choice (`{"enabled": true}`)."""
    percentile: float = Field(default=95.0, gt=0, le=100)
    """Hedge an attempt that has run longer than this percentile of recent successful ones."""
    min_delay_s: float = Field(default=1.0, ge=0)
    """Never hedge sooner than this, however fast the model usually is."""
    max_hedges: int = Field(default=1, ge=0)
    """Extra requests per attempt at most; the n-th goes out after n hedge delays."""
    window: int = Field(default=200, ge=1)
    """Recent successful attempts per endpoint/model the percentile is taken over."""
    min_samples: int = Field(default=20, ge=1)
    """Attempts of an endpoint/model that must succeed before the percentile is used."""
    cold_delay_s: float | None = Field(default=10.0, ge=0)
    """Until then, hedge an attempt that has run this long (None: do not hedge yet). Without
    it the calls that start with a worker, before any latency is known, are never hedged."""


class HedgeDelays:
    """Latencies of recent successful attempts per endpoint/model, and the hedge delay."""

    def __init__(self, policy: HedgePolicy) -> None:
        self.policy = policy
        self._samples: dict[str, deque[float]] = {}

    @property
    def active(self) -> bool:
        return self.policy.enabled and self.policy.max_hedges > 0

    def observe(self, key: str, seconds: float) -> None:
        """One successful attempt of `key` took `seconds` (hedges included)."""
        if not self.active:
            return
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=self.policy.window)
        samples.append(seconds)

    def samples(self, key: str) -> int:
        return len(self._samples.get(key, ()))

    def delay(self, key: str) -> float | None:
        """Seconds after which an attempt of `key` is hedged; None: do not hedge (yet)."""
        if not self.active:
            return None
        samples = self._samples.get(key)
        if samples is None or len(samples) < self.policy.min_samples:
            cold = self.policy.cold_delay_s
            return None if cold is None else max(self.policy.min_delay_s, cold)
        return max(self.policy.min_delay_s, percentile(samples, self.policy.percentile))


def percentile(values: deque[float] | list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `pct`% of values at or below."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
