"""A route's projection of an output: the fields it names, with the output's identity and
lineage (`schemas.projections`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmflow.schemas.outputs import Output
from llmflow.schemas.projections import CallLineage, Projection


def project(output: Output, route: str, fields: Mapping[str, str]) -> Projection:
    """The projection of `output` for `route`: each field name -> the value at its dotted
    path in the output's JSON, where `calls.<name>` is the call of that name (None when
    the path leads nowhere: a skipped call, an answer without that key)."""
    data = output.model_dump(mode="json")
    data["calls"] = {call["name"]: call for call in data["calls"]}
    return Projection(
        route=route,
        event_id=output.event_id,
        event_key=output.event_key,
        tenant=output.tenant,
        source_topic=output.source_topic,
        source_partition=output.source_partition,
        source_offset=output.source_offset,
        topology=output.topology,
        topology_version=output.topology_version,
        org_record=output.org_record,
        lineage=[
            CallLineage(
                name=call.name,
                model=call.model,
                endpoint=call.endpoint,
                prompt_version=call.prompt_version,
                call_id=call.call_id,
                reused=call.reused,
            )
            for call in output.model_calls
        ],
        fields={name: _at(data, path) for name, path in fields.items()},
        produced_at=output.produced_at,
    )


def _at(data: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data
