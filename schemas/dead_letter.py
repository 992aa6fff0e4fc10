"""Dead letters: an event that could not be answered, with the reason and its original bytes."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from llmflow.schemas._base import NUMBER, Contract, JsonInt, Timestamp

Stage = Literal["decode", "validate", "route", "image", "enrich", "prompt", "model", "output"]
# 2: results carry `record_type`, so readers tell them apart without guessing from keys.
DEAD_LETTER_SCHEMA_VERSION: Final = 2


class DeadLetter(Contract):
    """Why an event got no output. Replaying `original_b64` reproduces the input exactly."""

    record_type: Literal["dead_letter"] = "dead_letter"
    """Tells a dead letter from an output or a parked event when one reader takes all three."""
    schema_version: Annotated[Literal[2], NUMBER] = DEAD_LETTER_SCHEMA_VERSION
    """Contract version of this record."""
    event_id: str | None
    """Id of the event, when it could be read."""
    topology: str
    """The topology whose worker gave up on the event."""
    topology_version: str
    """Version of that topology."""
    stage: Stage
    """Where it failed: decode (not JSON), validate (breaks the contract), route (kind not
    accepted by the topology), image, enrich, prompt (template failed), model, output."""
    error_kind: str
    """A stable machine-readable reason, e.g. `too_many_pixels` or `ValidationError`."""
    message: str
    """A human-readable reason."""
    source_topic: str
    """Topic the event was read from."""
    source_partition: JsonInt
    """Partition the event was read from."""
    source_offset: JsonInt
    """Offset of the event; with topic and partition, it names an unreadable event."""
    original_b64: str
    """The event's original bytes, base64."""
    failed_at: Timestamp
    """When the worker gave up on the event."""
