"""Output schemas of model calls: JSON Schema 2020-12, written out or built from a pydantic model.

Both are checked against the 2020-12 meta-schema when the topology is validated, so a
broken schema is reported with its place in the file instead of failing the first call.
Errors are `ValueError`s: pydantic turns them into validation errors of the field.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel

MAX_MESSAGE_CHARS = 160


class InvalidSchema(ValueError):
    """A schema breaks the meta-schema; `path` leads to the offending keyword within it."""

    def __init__(self, message: str, path: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def check_schema(schema: Mapping[str, Any]) -> None:
    """Raise `InvalidSchema` when `schema` is not a valid JSON Schema 2020-12."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        message = exc.message
        if len(message) > MAX_MESSAGE_CHARS:  # messages quote the offending value
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        raise InvalidSchema(message, tuple(exc.absolute_path)) from exc


def schema_for_pydantic(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema of `model`, so a call can declare its answer as a pydantic model.

    Validation mode: the schema describes what the model must send, not what we serialise.
    """
    schema = model.model_json_schema(mode="validation")
    if schema.get("type") != "object":
        raise ValueError(f"{model.__name__} must describe a JSON object to be an output schema")
    try:
        check_schema(schema)  # a schema pydantic cannot express well fails here, early
    except InvalidSchema as exc:
        raise ValueError(f"{model.__name__} gives an invalid JSON Schema: {exc.message}") from exc
    return schema


def schema_of_output_model(path: str) -> dict[str, Any]:
    """The JSON Schema of the pydantic model at `package.module:Class`."""
    module_name, _, class_name = path.partition(":")
    try:
        model = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import output_model {path!r}: {exc}") from exc
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError(f"output_model {path!r} is not a pydantic model")
    return schema_for_pydantic(model)
