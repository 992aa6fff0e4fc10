"""Parked events: valid events held back (e.g. tenant over budget), to be replayed later."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from llmflow.schemas._base import NUMBER, Contract, JsonFloat, JsonInt, Timestamp
from llmflow.schemas.dead_letter import SHA256_PATTERN

# 2: results carry `record_type`, so readers tell them apart without guessing from keys.
# 3: `original_b64` is null when the original does not fit in the parked record;
#    `original_sha256` and `original_size` are always there (as in dead letters, version 3).
PARKED_SCHEMA_VERSION: Final = 3


class Parked(Contract):
    """An event that was not answered on purpose; replay `original_b64` to answer it. When
    it is null, the original is still in the source topic at the source offset."""

    record_type: Literal["parked"] = "parked"
    """Tells a parked event from an output or a dead letter when one reader takes all three."""
    schema_version: Annotated[Literal[3], NUMBER] = PARKED_SCHEMA_VERSION
    """Contract version of this record."""
    event_id: str
    """Id of the parked event."""
    tenant: str
    """The tenant the event was charged to (its `tenant`, else its `key`)."""
    topology: str
    """The topology whose worker parked the event."""
    topology_version: str
    """Version of that topology."""
    reason: str
    """Why it was parked, e.g. `budget`."""
    message: str
    """Human-readable detail: spend, budget and period."""
    period: str
    """The budget period the tenant exhausted, e.g. `2026-11-27`."""
    spent_usd: JsonFloat
    """What the tenant had spent in `period` when the event arrived."""
    budget_usd: JsonFloat
    """The tenant's budget for `period`."""
    source_topic: str
    """Topic the event was read from."""
    source_partition: JsonInt
    """Partition the event was read from."""
    source_offset: JsonInt
    """Offset of the event in that partition."""
    original_b64: str | None
    """The event's original bytes, base64; replay them to answer it. Null when carrying them
    would make the parked record larger than a Kafka record may be: the original then stays
    in the source topic at `source_offset` (until retention removes it)."""
    original_sha256: str = Field(pattern=SHA256_PATTERN)
    """SHA-256 of the original bytes, lowercase hex: tells whether a record found at the
    source offset is the one that was parked."""
    original_size: JsonInt = Field(ge=0)
    """Length of the original bytes."""
    parked_at: Timestamp
    """When the worker parked the event."""
