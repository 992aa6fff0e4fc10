"""Event contracts: what upstream publishes, what workers output, what dead letters carry.

Results (outputs, dead letters, parked events) say which they are in `record_type`; a route
may send a projection of an output (`record_type: projection`) instead of the output.

Every contract is a pydantic v2 model; JSON Schema copies for producers in other
languages live in `schemas/json/` (regenerate with `llmflow schemas export`).
"""

from llmflow.schemas.dead_letter import DeadLetter, Stage
from llmflow.schemas.events import (
    Event,
    ImageEvent,
    ImageRef,
    TextEvent,
    TextImageEvent,
    parse_event,
)
from llmflow.schemas.outputs import ImageInfo, ModelCallResult, OrgRecordRef, Output, Totals
from llmflow.schemas.parked import Parked
from llmflow.schemas.projections import CallLineage, Projection
from llmflow.schemas.results import Result

__all__ = [
    "CallLineage",
    "DeadLetter",
    "Event",
    "ImageEvent",
    "ImageInfo",
    "ImageRef",
    "ModelCallResult",
    "OrgRecordRef",
    "Output",
    "Parked",
    "Projection",
    "Result",
    "Stage",
    "TextEvent",
    "TextImageEvent",
    "Totals",
    "parse_event",
]
