"""Parked events: valid events held back (e.g. tenant over budget), to be replayed later."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict


class Parked(BaseModel):
    """An event that was not answered on purpose; replay `original_b64` to answer it."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: Literal[1] = 1
    event_id: str
    tenant: str
    """The tenant the event was charged to (its `tenant`, else its `key`)."""
    topology: str
    topology_version: str
    reason: str
    """Why it was parked, e.g. `budget`."""
    message: str
    """Human-readable detail: spend, budget and period."""
    period: str
    """The budget period the tenant exhausted, e.g. `2026-11-27`."""
    spent_usd: float
    budget_usd: float
    source_topic: str
    source_partition: int
    source_offset: int
    original_b64: str
    parked_at: AwareDatetime
