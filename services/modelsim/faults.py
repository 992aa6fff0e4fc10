"""Reproducible fault and latency draws for the model SIMULATOR."""

import enum
import random

from llmflow.services.modelsim.config import SimulatorConfig


class Fault(enum.Enum):
    """What happens to one model call."""

    NONE = "none"
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    SLOW = "slow"


def fault_for(draw: float, config: SimulatorConfig) -> Fault:
    """Map a uniform draw in [0, 1) to a fault: 429 band, then 500 band, then slow band."""
    bound = config.rate_429
    if draw < bound:
        return Fault.RATE_LIMIT
    bound += config.rate_500
    if draw < bound:
        return Fault.SERVER_ERROR
    bound += config.rate_slow
    if draw < bound:
        return Fault.SLOW
    return Fault.NONE


class FaultInjector:
    """One uniform draw per model call from `Random(seed)`, so fault sequences replay exactly.

    Jitter and invalid answers use generators of their own, so enabling them does not shift
    the fault sequence.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._faults = random.Random(config.seed)
        self._jitter = random.Random(f"jitter:{config.seed}")
        self._invalid = random.Random(f"invalid:{config.seed}")

    def next_fault(self) -> Fault:
        return fault_for(self._faults.random(), self._config)

    def next_invalid(self) -> bool:
        """Whether the next `json_schema` chat request gets a schema-breaking answer.

        Call it once per such request only, so the sequence follows those requests alone.
        """
        return self._invalid.random() < self._config.rate_invalid

    def latency_s(self) -> float:
        """`latency_ms` +/- uniform `jitter_ms`, never negative, in seconds."""
        delay_ms = self._config.latency_ms
        if self._config.jitter_ms:
            delay_ms += self._jitter.uniform(-self._config.jitter_ms, self._config.jitter_ms)
        return max(0.0, delay_ms) / 1000
