"""Projections: an output cut down to the fields a route names, for consumers that want less.

A projection still says which event it answers and what produced it: the event's identity
and source, the topology version, the org record, and every model call's lineage (model,
prompt version, call id), but none of the answers the route did not ask for.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from llmflow.schemas._base import NUMBER, Contract, JsonBool, JsonInt, Timestamp
from llmflow.schemas.outputs import OrgRecordRef

PROJECTION_SCHEMA_VERSION: Final = 1


class CallLineage(Contract):
    """Which model call, model and prompt version an output's answers came from."""

    name: str
    """The call's name in the topology."""
    model: str
    """The model that answered."""
    endpoint: str
    """The endpoint that answered."""
    prompt_version: str
    """Version of the prompt template that was rendered."""
    call_id: str
    """The call's pay-once id (the full output's `calls[].call_id`)."""
    reused: JsonBool
    """True when the answer was paid for by an earlier delivery of the event."""


class Projection(Contract):
    """The fields a route names of one output, with the output's identity and lineage."""

    record_type: Literal["projection"] = "projection"
    """Tells a projection from a full output on a route's topic."""
    schema_version: Annotated[Literal[1], NUMBER] = PROJECTION_SCHEMA_VERSION
    """Contract version of this record."""
    route: str
    """The route that sent it."""
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
    """Name of the topology that produced the output."""
    topology_version: str
    """Version of that topology."""
    org_record: OrgRecordRef | None
    """The org-data record used for enrichment, when the topology enriches."""
    lineage: list[CallLineage]
    """Every model call behind the output, in the topology's order."""
    fields: dict[str, Any]
    """The route's field names -> their values in the output (null where the output has
    none, e.g. a call that was skipped)."""
    produced_at: Timestamp
    """When the output was ready."""
