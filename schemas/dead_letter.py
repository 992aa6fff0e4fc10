"""Dead letters: an event that could not be answered, with the reason and its original bytes."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

Stage = Literal["decode", "validate", "route", "image", "enrich", "prompt", "model", "output"]


class DeadLetter(BaseModel):
    """Why an event got no output. Replaying `original_b64` reproduces the input exactly."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    schema_version: Literal[1] = 1
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
    source_partition: int
    source_offset: int
    original_b64: str
    """The event's original bytes, base64."""
    failed_at: AwareDatetime
