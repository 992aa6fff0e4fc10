"""Output schemas: checked against the 2020-12 meta-schema, built from pydantic models."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, RootModel

from llmflow.topologies.output_schemas import InvalidSchema, check_schema, schema_for_pydantic


def test_check_schema_says_where() -> None:
    with pytest.raises(InvalidSchema) as info:
        check_schema({"type": "object", "properties": {"a": {"minimum": "zero"}}})
    assert info.value.path == ("properties", "a", "minimum")
    assert "'zero' is not of type 'number'" in info.value.message
    check_schema({"type": "object", "properties": {"a": {"minimum": 0}}})


class Scores(BaseModel):
    values: list[int]


def test_pydantic_model_must_describe_an_object() -> None:
    schema = schema_for_pydantic(Scores)
    assert schema["type"] == "object" and schema["required"] == ["values"]
    with pytest.raises(ValueError, match="must describe a JSON object"):
        schema_for_pydantic(RootModel[list[int]])
