from __future__ import annotations

import pytest

from llmflow.services.models.costs import Price, call_cost


def test_cost_from_prices() -> None:
    prices = {"m": Price(input_per_mtok=0.15, output_per_mtok=0.60)}
    assert call_cost(prices, "m", 1_000_000, 500_000) == pytest.approx(0.45)
    assert call_cost(prices, "unknown", 10, 10) == 0.0
