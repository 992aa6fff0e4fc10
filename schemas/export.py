"""JSON Schema copies of the contracts, for producers and consumers in other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.events import EVENT_ADAPTER
from llmflow.schemas.outputs import Output
from llmflow.schemas.parked import Parked
from llmflow.schemas.projections import Projection
from llmflow.schemas.results import RESULT_ADAPTER

JSON_DIR = Path(__file__).parent / "json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_PREFIX = "urn:llmflow:schema:"
"""Each file's `$id` is this plus its name without `.schema.json`; `#/$defs/...` resolve in it."""

EVENT_DESCRIPTION = (
    "An input event, as the worker accepts it: UTF-8 JSON text without a byte order mark; "
    "`kind` selects the contract."
)


def _document(name: str, schema: dict[str, Any], **top: str) -> dict[str, Any]:
    return {"$schema": DIALECT, "$id": ID_PREFIX + name, **top, **schema}


def _written(model: type[BaseModel]) -> dict[str, Any]:
    # Records the worker writes: serialization mode, where every always-written field is required.
    return model.model_json_schema(mode="serialization")


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, generated from the pydantic models."""
    return {
        "event.schema.json": _document(
            "event",
            EVENT_ADAPTER.json_schema(),
            title="Event",
            description=EVENT_DESCRIPTION,
        ),
        "output.schema.json": _document("output", _written(Output)),
        "dead_letter.schema.json": _document("dead_letter", _written(DeadLetter)),
        "parked.schema.json": _document("parked", _written(Parked)),
        "projection.schema.json": _document("projection", _written(Projection)),
        "result.schema.json": _document(
            "result",
            RESULT_ADAPTER.json_schema(mode="serialization"),
            title="Result",
            description="What a worker writes for an event: an output, a dead letter or a "
            "parked event, told apart by `record_type`.",
        ),
    }


def render(document: dict[str, Any]) -> str:
    """The file text of one schema: stable key order, so regenerating changes nothing."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = JSON_DIR) -> list[Path]:
    """Write every schema file into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in schema_documents().items():
        path = directory / name
        path.write_text(render(document))
        written.append(path)
    return written
