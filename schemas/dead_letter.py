"""Dead letters: an event that could not be answered, with the reason and where to find it."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from llmflow.schemas._base import END, NUMBER, Contract, JsonInt, Timestamp

Stage = Literal[
    "decode", "validate", "route", "image", "enrich", "retrieve", "prompt", "model", "output"
]
# 2: results carry `record_type`, so readers tell them apart without guessing from keys.
# 3: `original_b64` is null when the original does not fit in the dead letter (or was a
#    tombstone); `original_sha256` and `original_size` are always there.
# 4: stage `retrieve` (a retrieval step failed).
DEAD_LETTER_SCHEMA_VERSION: Final = 4
SHA256_PATTERN = r"^[0-9a-f]{64}" + END


class DeadLetter(Contract):
    """Why an event got no output. Replaying `original_b64` reproduces the input exactly; when
    it is null, the original is still in the source topic at the source offset."""

    record_type: Literal["dead_letter"] = "dead_letter"
    """Tells a dead letter from an output or a parked event when one reader takes all three."""
    schema_version: Annotated[Literal[4], NUMBER] = DEAD_LETTER_SCHEMA_VERSION
    """Contract version of this record."""
    event_id: str | None
    """Id of the event, when it could be read."""
    topology: str
    """The topology whose worker gave up on the event."""
    topology_version: str
    """Version of that topology."""
    stage: Stage
    """Where it failed: decode (no record value, or not JSON), validate (breaks the contract),
    route (kind not accepted by the topology, or the tenant's budget could not be checked),
    image, enrich, retrieve (the retrieval step's query or filters failed to render, or the
    search failed), prompt (template failed), model, output (the result could not be written,
    e.g. it would exceed the record size limit)."""
    error_kind: str
    """A stable machine-readable reason, e.g. `too_many_pixels`, `tombstone`, or
    `internal_error` for an unexpected exception (its class starts `message`)."""
    message: str
    """A human-readable reason, clipped to a few thousand characters."""
    source_topic: str
    """Topic the event was read from."""
    source_partition: JsonInt
    """Partition the event was read from."""
    source_offset: JsonInt
    """Offset of the event; with topic and partition, it names an unreadable event."""
    original_b64: str | None
    """The event's original bytes, base64; null when the record had no value (a tombstone)
    or when carrying them would make the dead letter larger than a Kafka record may be. The
    original then stays in the source topic at `source_offset` (until retention removes it)."""
    original_sha256: str = Field(pattern=SHA256_PATTERN)
    """SHA-256 of the original bytes (of no bytes for a tombstone), lowercase hex: tells
    whether a record found at the source offset is the one that failed."""
    original_size: JsonInt = Field(ge=0)
    """Length of the original bytes (0 for a tombstone)."""
    failed_at: Timestamp
    """When the worker gave up on the event."""
