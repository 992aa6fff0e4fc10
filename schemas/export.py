"""JSON Schema copies of the contracts, for producers and consumers in other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.events import EVENT_ADAPTER
from llmflow.schemas.outputs import Output
from llmflow.schemas.parked import Parked

JSON_DIR = Path(__file__).parent / "json"


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, generated from the pydantic models."""
    return {
        "event.schema.json": {"title": "Event", **EVENT_ADAPTER.json_schema()},
        "output.schema.json": Output.model_json_schema(),
        "dead_letter.schema.json": DeadLetter.model_json_schema(),
        "parked.schema.json": Parked.model_json_schema(),
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in schema_documents().items():
        path = directory / name
        path.write_text(render(document))
        written.append(path)
    return written
