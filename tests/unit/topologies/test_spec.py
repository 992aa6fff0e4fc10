"""The topology model documents itself and names every topic it uses."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel

from llmflow.topologies import spec

MINIMAL: dict[str, Any] = {
    "name": "demo",
    "version": "1",
    "input_topic": "in",
    "output_topic": "out",
    "dead_letter_topic": "dlq",
    "accepts": ["text"],
    "calls": [{"name": "c", "model": "m", "prompt": {"version": "p1", "user": "u"}}],
}


def _spec_models() -> list[type[BaseModel]]:
    return [
        model
        for _, model in inspect.getmembers(spec, inspect.isclass)
        if issubclass(model, BaseModel) and model.__module__ == spec.__name__
    ]


def test_every_field_of_every_spec_model_is_documented() -> None:
    models = _spec_models()
    assert {"Topology", "ModelCall", "Prompt", "Target"} <= {m.__name__ for m in models}
    undocumented = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undocumented == []


def test_topics_include_the_parked_topic() -> None:
    topology = spec.Topology.model_validate(MINIMAL)
    assert topology.topics == ["in", "out", "dlq", "in.parked"]
    named = spec.Topology.model_validate({**MINIMAL, "parked_topic": "waiting"})
    assert named.topics[-1] == "waiting"
