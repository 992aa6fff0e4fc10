"""What model calls cost: list prices per model and the cost of one call."""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class Price(BaseModel):
    """List price of a model in USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input_per_mtok: float = Field(ge=0)
    """USD per million prompt tokens."""
    output_per_mtok: float = Field(default=0, ge=0)
    """USD per million completion tokens."""


# List prices (USD per million tokens) of the models the shipped topologies name.
DEFAULT_PRICES = {
    "gpt-4o-mini": Price(input_per_mtok=0.15, output_per_mtok=0.60),
    "gpt-4o": Price(input_per_mtok=2.50, output_per_mtok=10.00),
    "text-embedding-3-small": Price(input_per_mtok=0.02),
}


def call_cost(prices: dict[str, Price], model: str, tokens_in: int, tokens_out: int) -> float:
    """Cost of one call; a model missing from the table costs 0 (and is logged once)."""
    price = prices.get(model)
    if price is None:
        if model not in _unpriced:
            _unpriced.add(model)
            log.warning("no price for model %r: its calls count as 0 USD", model)
        return 0.0
    return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1_000_000


_unpriced: set[str] = set()
