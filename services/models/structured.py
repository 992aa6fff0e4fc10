"""Structured model answers: parse and validate against the call's JSON Schema, ask for repair.

A call that declares `output_schema` gets JSON back, but models (and the simulator on
purpose) sometimes break the schema. `parse_answer` turns such answers into a
`SchemaViolation` whose short message can be shown to the model in ONE repair attempt
(`repair_messages`) and, if that fails too, stored with the dead letter.
Validation follows JSON Schema 2020-12; `format` is an annotation only, as in that draft.
"""

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from llmflow.errors import ConfigError, LlmflowError

MAX_REPORTED_ERRORS = 3
MAX_ERROR_CHARS = 160
VALIDATOR_CACHE_SIZE = 256


class SchemaViolation(LlmflowError):
    """The answer is not JSON or does not match the declared schema.

    `message` is short enough to quote back to the model and to keep in a dead letter.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_answer(text: str, schema: Mapping[str, Any]) -> Any:
    """The JSON value of `text`, valid against `schema`.

    Raises `SchemaViolation` for a bad answer and `ConfigError` for a bad schema.
    """
    validator = _validator(_schema_key(schema))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaViolation(f"answer is not JSON: {exc.msg} at char {exc.pos}") from exc
    errors = sorted(validator.iter_errors(value), key=lambda e: (e.json_path, e.message))
    if errors:
        raise SchemaViolation(_describe(errors))
    return value


def repair_messages(
    messages: Sequence[Mapping[str, Any]], bad_answer: str, problem: str
) -> list[dict[str, Any]]:
    """The conversation for one repair attempt: the original turns, the bad answer, the fix-up.

    Showing the model its own answer and the exact problem fixes most violations in one turn,
    which is cheaper than starting over.
    """
    return [
        *(dict(message) for message in messages),
        {"role": "assistant", "content": bad_answer},
        {
            "role": "user",
            "content": (
                "Your previous answer does not match the required JSON schema: "
                f"{problem}\n"
                "Reply with the corrected JSON object only, with no other text."
            ),
        },
    ]


def _schema_key(schema: Mapping[str, Any]) -> str:
    """Canonical JSON of the schema: equal schemas share one compiled validator."""
    try:
        return json.dumps(schema, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"output schema is not JSON: {exc}") from exc


@lru_cache(maxsize=VALIDATOR_CACHE_SIZE)
def _validator(key: str) -> Draft202012Validator:
    """Checked once per distinct schema; every answer of a call reuses it."""
    schema = json.loads(key)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = exc.json_path
        raise ConfigError(f"invalid output schema at {where}: {_clip(exc.message)}") from exc
    return Draft202012Validator(schema)


def _describe(errors: Sequence[ValidationError]) -> str:
    shown = [f"{error.json_path}: {_clip(error.message)}" for error in errors]
    message = "; ".join(shown[:MAX_REPORTED_ERRORS])
    hidden = len(shown) - MAX_REPORTED_ERRORS
    return f"{message} (and {hidden} more)" if hidden > 0 else message


def _clip(text: str) -> str:
    """Error messages quote the offending value, which can be huge."""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."
