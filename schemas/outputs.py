"""Outputs: one per event, with the lineage and cost of every model call behind it."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import Field

from llmflow.schemas._base import NUMBER, Contract, JsonBool, JsonFloat, JsonInt, Timestamp

# 2: results carry `record_type`, so readers tell them apart without guessing from keys.
# 3: the org record's offset, and the passages a retrieval step used (`retrieval`).
# 4: calls a condition skipped (`skipped`), the routes an output took (`routes`).
OUTPUT_SCHEMA_VERSION: Final = 4


class ModelCallResult(Contract):
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
    tokens_in: JsonInt = Field(ge=0)
    """Prompt tokens, from the endpoint's `usage`."""
    tokens_out: JsonInt = Field(ge=0)
    """Completion tokens, from the endpoint's `usage`."""
    latency_ms: JsonFloat = Field(ge=0)
    """Wall time of the call, retries included."""
    attempts: JsonInt = Field(default=1, ge=0)
    """HTTP requests made: retries, fallbacks and a schema repair included; 0 when reused."""
    repaired: JsonBool = False
    """The first answer broke the declared schema and a repair request fixed it."""
    reused: JsonBool = False
    """Answered before (an earlier delivery of the same event) and not paid again."""
    cost_usd: JsonFloat = Field(default=0.0, ge=0)
    """Price of the tokens, from the configured price table."""


class SkippedCall(Contract):
    """A call of the topology that did not run for this event, and cost nothing."""

    name: str
    """The call's name in the topology."""
    when: str
    """The condition that was false: the call's own, or that of a call it needs."""
    because: str | None = None
    """The call it needs that was skipped; null when its own condition was false."""


class OrgRecordRef(Contract):
    """Which organisational-data record enriched the event."""

    table: str
    """Org-data table, e.g. `customers`."""
    key: str
    """The record's key."""
    version: str | None
    """Content hash of the record used; null when no record was found."""
    offset: JsonInt | None = None
    """Offset of that version in the table's topic; null when no record was found."""


class RetrievedPassage(Contract):
    """A passage a retrieval step put in the prompts' context."""

    id: str
    """`<collection>/<record key>#<n>`."""
    key: str
    """Key of the record the passage belongs to."""
    n: JsonInt = Field(ge=0)
    """Position of the passage in its record, from 0."""
    version: str
    """Content hash of the record version the passage came from."""
    offset: JsonInt
    """Offset of that record version in the collection's topic."""
    score: JsonFloat
    """Rank score: BM25 (keyword), cosine (vector) or reciprocal-rank sum (hybrid)."""


class Retrieved(Contract):
    """What a retrieval step searched for and found."""

    collection: str
    """The document collection searched."""
    mode: Literal["keyword", "vector", "hybrid"]
    """How it was searched."""
    query: str
    """The rendered query (at most 2,000 characters shown)."""
    embedding: ModelCallResult | None
    """The query's embedding call (vector and hybrid modes): tokens, cost, reuse."""
    passages: list[RetrievedPassage]
    """The passages found, best first."""


class ImageInfo(Contract):
    """An image as it was sent to the model, after preparation."""

    sha256: str
    """Hash of the prepared bytes."""
    width: JsonInt
    """Width in pixels as sent, after any downscaling."""
    height: JsonInt
    """Height in pixels as sent, after any downscaling."""
    original_width: JsonInt
    """Width in pixels of the image the event referenced."""
    original_height: JsonInt
    """Height in pixels of the image the event referenced."""


class Totals(Contract):
    """Sums over all model calls of the event."""

    model_calls: JsonInt
    """Number of model calls, reused answers included."""
    tokens_in: JsonInt
    """Prompt tokens over all calls."""
    tokens_out: JsonInt
    """Completion tokens over all calls."""
    cost_usd: JsonFloat = 0.0
    """Cost of the calls paid for this event (reused answers were paid before)."""
    latency_ms: JsonFloat
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


class Output(Contract):
    """The merged result of one event."""

    record_type: Literal["output"] = "output"
    """Tells an output from a dead letter or a parked event when one reader takes all three."""
    schema_version: Annotated[Literal[4], NUMBER] = OUTPUT_SCHEMA_VERSION
    """Contract version of this record."""
    event_id: str
    """Id of the input event."""
    event_key: str
    """Business key of the input event; also the Kafka record key."""
    tenant: str | None
    """Tenant of the input event."""
    source_topic: str
    """Topic the input event was read from."""
    source_partition: JsonInt
    """Partition of the input event."""
    source_offset: JsonInt
    """Offset of the input event."""
    topology: str
    """Name of the topology that produced this output."""
    topology_version: str
    """Version of that topology."""
    org_record: OrgRecordRef | None
    """The org-data record used for enrichment, when the topology enriches."""
    retrieval: Retrieved | None = None
    """The passages retrieved for the prompts, when the topology retrieves."""
    images: list[ImageInfo]
    """Images as sent to the models."""
    calls: list[ModelCallResult]
    """One entry per model call that ran, in the topology's order."""
    skipped: list[SkippedCall] = Field(default_factory=list)
    """The calls a condition skipped, in the topology's order."""
    routes: list[str] = Field(default_factory=list)
    """The topology's routes whose topics also got this output, in its order."""
    totals: Totals
    """Token and latency totals."""
    worker: str
    """The worker that produced the output (host:pid)."""
    received_at: Timestamp
    """When the worker took the event from Kafka."""
    produced_at: Timestamp
    """When the output was ready."""

    @property
    def model_calls(self) -> list[ModelCallResult]:
        """Every model call behind the output: its calls and the retrieval query's embedding."""
        embedding = self.retrieval.embedding if self.retrieval else None
        return [*self.calls, *([embedding] if embedding else [])]

    def call(self, name: str) -> ModelCallResult:
        """The result of the call named `name`."""
        for result in self.calls:
            if result.name == name:
                return result
        raise KeyError(name)
