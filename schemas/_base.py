"""What every contract shares: model settings and the scalar rules that pydantic and the
exported JSON Schema must both enforce, written once so the two cannot drift apart."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
)
from pydantic_core import CoreSchema

# Patterns are searched with Python's `re` on both sides (`regex_engine` below, and the
# jsonschema library), and must mean the same in ECMA-262 for validators in other languages:
# hence `[0-9]` (Python's `\d` takes every Unicode digit) and `(?![\s\S])` for "end of text"
# (Python's `$` also matches before a final newline; `\Z` is not ECMA-262).
END = r"(?![\s\S])"

# RFC 3339 `date-time` (section 5.6) minus leap seconds, which Python datetimes cannot hold.
# The `date-time` format check alone is not enough: rfc3339-validator lets a trailing newline
# through, and format checks are optional for other validators; pydantic alone would take unix
# numbers, a space for `T`, `+0100` and missing seconds.
RFC3339_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]"
    r":[0-5][0-9](\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])" + END
)

# JSON text may escape lone UTF-16 surrogates (`"\ud800"`), which are no Unicode characters:
# pydantic's JSON parser rejects them, JSON Schema can only say so with a pattern.
SCALAR_VALUES_PATTERN = r"^[^\ud800-\udfff]*" + END


class Contract(BaseModel):
    """Base of every contract: closed, immutable, documented field by field."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        regex_engine="python-re",
        # NaN and infinities are no JSON numbers (pydantic would write them as null).
        allow_inf_nan=False,
        # Serialization schemas describe what a worker writes: a field with a default is
        # always written, so it is required there.
        json_schema_serialization_defaults_required=True,
    )


@dataclass(frozen=True, slots=True)
class SchemaPattern:
    """Adds `pattern` to the JSON Schema only; the runtime check lives elsewhere."""

    pattern: str

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        schema = handler(core_schema)
        schema["pattern"] = self.pattern
        return schema


def _rfc3339(value: object) -> object:
    # Python callers may pass datetimes; JSON must bring an RFC 3339 string.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or re.search(RFC3339_PATTERN, value) is None:
        raise ValueError("must be an RFC 3339 date-time string with a time zone")
    return value


def _json_number(value: object) -> object:
    # Lax mode reads `"42"` and `true` as numbers, JSON Schema does not (Python's bool is an
    # int). Strict mode would be no better: it refuses `42.0`, which JSON Schema calls an integer.
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON number")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339), SchemaPattern(RFC3339_PATTERN)]
"""An aware datetime; in JSON an RFC 3339 `date-time` string and nothing else."""

UnicodeStr = Annotated[str, SchemaPattern(SCALAR_VALUES_PATTERN)]
"""A string of Unicode scalar values (the JSON parser enforces it at run time)."""

NUMBER = BeforeValidator(_json_number)
"""For numeric literals such as `schema_version`: `true` and `"1"` are not `1`."""

JsonInt = Annotated[int, NUMBER]
"""An integer that JSON brings as a number (`42` or `42.0`), never as a string or boolean."""

JsonFloat = Annotated[float, NUMBER]
"""A number that JSON brings as a number, never as a string or boolean (and finite, by
`allow_inf_nan=False` above)."""

JsonBool = Annotated[bool, Field(strict=True)]
"""`true` or `false`; lax mode would also read `"yes"`, `"on"`, `1` and `0`."""
