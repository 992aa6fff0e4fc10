"""Structured answers: JSON Schema validation, short violation messages, repair turns."""

import json
from typing import Any, Literal

import pydantic
import pytest

from llmflow.errors import ConfigError
from llmflow.services.models.structured import SchemaViolation, parse_answer, repair_messages
from llmflow.topologies.output_schemas import schema_for_pydantic

TICKET: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "score": {"type": "integer", "minimum": 0},
    },
    "required": ["summary", "priority"],
    "additionalProperties": False,
}


def _violation(answer: Any, schema: dict[str, Any] = TICKET) -> str:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    with pytest.raises(SchemaViolation) as caught:
        parse_answer(text, schema)
    assert str(caught.value) == caught.value.message
    return caught.value.message


def test_valid_answer_is_parsed() -> None:
    answer = {"summary": "printer on fire", "priority": "urgent", "tags": ["hw"], "score": 3}
    assert parse_answer(json.dumps(answer), TICKET) == answer


def test_wrong_enum_names_path_and_choices() -> None:
    message = _violation({"summary": "s", "priority": "asap"})
    assert message == "$.priority: 'asap' is not one of ['low', 'normal', 'high', 'urgent']"


def test_missing_required_property() -> None:
    assert _violation({"summary": "s"}) == "$: 'priority' is a required property"


def test_wrong_type_in_nested_path() -> None:
    message = _violation({"summary": "s", "priority": "low", "tags": ["a", 7]})
    assert message == "$.tags[1]: 7 is not of type 'string'"


def test_not_json() -> None:
    assert _violation("") == "answer is not JSON: Expecting value at char 0"
    assert _violation('{"summary": ').startswith("answer is not JSON: ")


def test_extra_property_is_refused() -> None:
    message = _violation({"summary": "s", "priority": "low", "extra": 1})
    assert message.startswith("$: Additional properties are not allowed")
    assert "'extra'" in message


def test_several_errors_are_capped() -> None:
    answer = {"summary": 1, "priority": "asap", "tags": "x", "score": -1}
    message = _violation(answer)
    assert message.count("; ") == 2
    assert message.endswith("(and 1 more)")
    assert message.startswith("$.priority: ")


def test_huge_values_are_clipped() -> None:
    message = _violation({"summary": "s", "priority": "x" * 10_000})
    assert len(message) < 200
    assert message.endswith("...")


def test_repair_messages_shape() -> None:
    original = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Triage: printer on fire"},
    ]
    problem = "$.priority: 'asap' is not one of ['low', 'normal', 'high', 'urgent']"
    repaired = repair_messages(original, '{"priority": "asap"}', problem)
    assert repaired[:2] == original
    assert repaired[2] == {"role": "assistant", "content": '{"priority": "asap"}'}
    assert repaired[3]["role"] == "user"
    assert problem in repaired[3]["content"]
    assert "JSON object only" in repaired[3]["content"]
    assert len(repaired) == 4
    repaired[0]["content"] = "changed"
    assert original[0]["content"] == "Answer in JSON."


class Ticket(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    summary: str
    priority: Literal["low", "normal", "high", "urgent"]
    tags: list[str]


def test_pydantic_schema_round_trip() -> None:
    """A call declared with `output_model` validates answers with the model's schema."""
    schema = schema_for_pydantic(Ticket)
    ticket = Ticket(summary="printer on fire", priority="high", tags=["hw"])
    parsed = parse_answer(ticket.model_dump_json(), schema)
    assert Ticket.model_validate(parsed) == ticket
    message = _violation({"summary": "s", "priority": "asap", "tags": []}, schema)
    assert message.startswith("$.priority: 'asap' is not one of")


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"a": {"type": "strnig"}}},
        {"type": "object", "required": "a"},
        {"type": "object", "properties": {"a": {"minimum": "zero"}}},
    ],
)
def test_invalid_schema_is_a_config_error(schema: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="invalid output schema"):
        parse_answer("{}", schema)
