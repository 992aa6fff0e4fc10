"""Outputs: one per event, with the lineage and cost of every model call behind it."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

OUTPUT_SCHEMA_VERSION: Final = 1


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ModelCallResult(_Contract):
    """The answer of one model call and what it cost."""

    name: str
    """The call's name in the topology, e.g. `classify`."""
    kind: Literal["chat", "vision", "embedding"]
    """What sort of call it was."""
    call_id: str
    """Deterministic: same event, topology version, call and prompt version, same id."""
    model: str
    """The model that answered, as the endpoint reported it."""
    endpoint: str = "default"
    """The endpoint that answered (`default` or a named fallback endpoint)."""
    prompt_version: str
    """Version of the prompt template that was rendered."""
    answer: Any
    """Text for chat and vision calls, a JSON value when the call declares an output schema,
    a list of floats for embeddings."""
    tokens_in: int = Field(ge=0)
    """Prompt tokens, from the endpoint's `usage`."""
    tokens_out: int = Field(ge=0)
    """Completion tokens, from the endpoint's `usage`."""
    latency_ms: float = Field(ge=0)
    """Wall time of the call, retries included."""
    attempts: int = Field(default=1, ge=0)
    """HTTP requests made: retries, fallbacks and a schema repair included; 0 when reused."""
    repaired: bool = False
    """The first answer broke the declared schema and a repair request fixed it."""
    reused: bool = False
    """Answered before (an earlier delivery of the same event) and not paid again."""
    cost_usd: float = Field(default=0.0, ge=0)
    """Price of the tokens, from the configured price table."""


class OrgRecordRef(_Contract):
    """Which organisational-data record enriched the event."""

    table: str
    """Org-data table, e.g. `customers`."""
    key: str
    """The record's key."""
    version: str | None
    """Content hash of the record used; null when no record was found."""


class ImageInfo(_Contract):
    """An image as it was sent to the model, after preparation."""

    sha256: str
    """Hash of the prepared bytes."""
    width: int
    height: int
    original_width: int
    original_height: int


class Totals(_Contract):
    """Sums over all model calls of the event."""

    model_calls: int
    tokens_in: int
    tokens_out: int
    cost_usd: float = 0.0
    """Cost of the calls paid for this event (reused answers were paid before)."""
    latency_ms: float
    """Time from the worker receiving the event to the output being ready."""

    @classmethod
    def of(cls, calls: list[ModelCallResult], latency_ms: float) -> Totals:
        """The sums over `calls`."""
        return cls(
            model_calls=len(calls),
            tokens_in=sum(c.tokens_in for c in calls),
            tokens_out=sum(c.tokens_out for c in calls),
            cost_usd=sum(c.cost_usd for c in calls),
            latency_ms=latency_ms,
        )


class Output(_Contract):
    """The merged result of one event."""

    schema_version: Literal[1] = OUTPUT_SCHEMA_VERSION
    event_id: str
    """Id of the input event."""
    event_key: str
    """Business key of the input event; also the Kafka record key."""
    tenant: str | None
    """Tenant of the input event."""
    source_topic: str
    """Topic the input event was read from."""
    source_partition: int
    """Partition of the input event."""
    source_offset: int
    """Offset of the input event."""
    topology: str
    """Name of the topology that produced this output."""
    topology_version: str
    """Version of that topology."""
    org_record: OrgRecordRef | None
    """The org-data record used for enrichment, when the topology enriches."""
    images: list[ImageInfo]
    """Images as sent to the models."""
    calls: list[ModelCallResult]
    """One entry per model call, in the topology's order."""
    totals: Totals
    """Token and latency totals."""
    worker: str
    """The worker that produced the output (host:pid)."""
    received_at: AwareDatetime
    """When the worker took the event from Kafka."""
    produced_at: AwareDatetime
    """When the output was ready."""

    def call(self, name: str) -> ModelCallResult:
        """The result of the call named `name`."""
        for result in self.calls:
            if result.name == name:
                return result
        raise KeyError(name)
