"""Configuration checks and reproducible fault draws."""

from collections import Counter

import pytest
from pydantic import ValidationError

from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.faults import Fault, FaultInjector, fault_for


def test_shares_are_validated() -> None:
    with pytest.raises(ValidationError):
        SimulatorConfig(rate_429=1.5)
    with pytest.raises(ValidationError):
        SimulatorConfig(rate_429=0.5, rate_500=0.4, rate_slow=0.2)
    assert SimulatorConfig(rate_429=0.1, rate_500=0.2, rate_slow=0.7).rate_slow == 0.7


def test_config_is_frozen_and_documented() -> None:
    config = SimulatorConfig()
    with pytest.raises(ValidationError):
        config.seed = 3  # type: ignore[misc]
    assert "sim-chat" in config.models
    assert SimulatorConfig.model_fields["rate_429"].description


def test_bands_in_order() -> None:
    config = SimulatorConfig(rate_429=0.1, rate_500=0.2, rate_slow=0.3)
    assert fault_for(0.05, config) is Fault.RATE_LIMIT
    assert fault_for(0.15, config) is Fault.SERVER_ERROR
    assert fault_for(0.45, config) is Fault.SLOW
    assert fault_for(0.65, config) is Fault.NONE


def _draws(config: SimulatorConfig, count: int) -> list[Fault]:
    injector = FaultInjector(config)
    return [injector.next_fault() for _ in range(count)]


def test_seeded_share_is_reproducible() -> None:
    config = SimulatorConfig(rate_429=0.3, seed=7)
    draws = _draws(config, 1000)
    assert draws == _draws(config, 1000)
    share = Counter(draws)[Fault.RATE_LIMIT] / 1000
    assert 0.25 <= share <= 0.35
    assert _draws(config.model_copy(update={"seed": 8}), 1000) != draws


def test_jitter_stays_in_range_and_does_not_shift_faults() -> None:
    config = SimulatorConfig(latency_ms=10, jitter_ms=5, rate_500=0.5)
    injector = FaultInjector(config)
    delays = [injector.latency_s() for _ in range(200)]
    assert all(0.005 <= d <= 0.015 for d in delays)
    assert len(set(delays)) > 1
    assert _draws(config, 50) == _draws(config.model_copy(update={"jitter_ms": 0}), 50)
