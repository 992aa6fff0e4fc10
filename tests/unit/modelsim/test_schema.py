"""Structured outputs: instances are deterministic and valid against their schema."""

import json
from collections.abc import Mapping
from typing import Any

import pytest

from llmflow.services.modelsim.answers import BadRequest, chat_completion
from llmflow.services.modelsim.schema import schema_instance

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _resolve(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = root
    for key in ref.removeprefix("#/").split("/"):
        node = node[key]
    return node  # type: ignore[no-any-return]


def _has_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def check(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """A small JSON-schema checker for the keywords the simulator supports."""
    if "$ref" in schema:
        check(value, _resolve(schema["$ref"], root), root)
        return
    if "anyOf" in schema:
        errors = []
        for branch in schema["anyOf"]:
            try:
                check(value, branch, root)
                return
            except AssertionError as exc:
                errors.append(exc)
        raise AssertionError(f"{value!r} matches no anyOf branch: {errors}")
    if "const" in schema:
        assert value == schema["const"]
    if "enum" in schema:
        assert value in schema["enum"]
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        assert any(_has_type(value, k) for k in kinds), f"{value!r} is not {kinds}"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(value)
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(properties)
        for key, item in value.items():
            check(item, properties.get(key, {}), root)
    if isinstance(value, list):
        assert schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value))
        for item in value:
            check(item, schema.get("items", {}), root)
    if isinstance(value, str):
        assert schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        assert value >= schema.get("minimum", value)
        assert value <= schema.get("maximum", value)
        assert value > schema.get("exclusiveMinimum", value - 1)
        assert value < schema.get("exclusiveMaximum", value + 1)


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "sentiment", "score", "confidence", "tags", "flagged", "note", "owner"],
    "properties": {
        "title": {"type": "string", "maxLength": 8},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 3}, "maxItems": 5},
        "flagged": {"type": "boolean"},
        "note": {"type": ["string", "null"]},
        "owner": {"$ref": "#/$defs/person"},
        "contact": {"anyOf": [{"type": "null"}, {"type": "string", "format": "email"}]},
    },
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        }
    },
}


@pytest.mark.parametrize("digest", ["00" * 32, "ff" * 32, "0123456789abcdef" * 4])
def test_instances_validate(digest: str) -> None:
    value = schema_instance(SCHEMA, digest)
    check(value, SCHEMA, SCHEMA)
    assert set(value) == set(SCHEMA["properties"])
    assert value["contact"] == "sim@example.com"


def test_enum_choice_is_per_field_and_deterministic() -> None:
    digests = [f"{n:064x}" for n in range(40)]
    picks = {schema_instance(SCHEMA, d)["sentiment"] for d in digests}
    assert picks == {"positive", "neutral", "negative"}
    assert schema_instance(SCHEMA, digests[0]) == schema_instance(SCHEMA, digests[0])


def test_array_lengths_default_to_one_to_three() -> None:
    schema = {"type": "array", "items": {"type": "integer"}}
    lengths = {len(schema_instance(schema, f"{n:064x}")) for n in range(40)}
    assert lengths == {1, 2, 3}
    assert len(schema_instance({**schema, "minItems": 5}, "00" * 32)) == 5


def test_chat_json_schema_response() -> None:
    body = {
        "model": "sim-chat",
        "messages": [{"role": "user", "content": "classify this"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "review", "strict": True, "schema": SCHEMA},
        },
    }
    content = chat_completion(body)["choices"][0]["message"]["content"]
    value = json.loads(content)
    check(value, SCHEMA, SCHEMA)
    assert chat_completion(body)["choices"][0]["message"]["content"] == content


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "https://example.com/schema.json"},
        {"$ref": "#/$defs/missing"},
        {"type": "integer", "minimum": 5, "maximum": 4},
        {"$ref": "#", "type": "object"},
    ],
)
def test_unsupported_schemas_are_bad_requests(schema: dict[str, Any]) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    with pytest.raises(BadRequest):
        chat_completion(body)
