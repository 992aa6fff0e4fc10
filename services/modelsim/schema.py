"""Deterministic instances of a JSON schema, for SIMULATOR structured outputs.

Every value derives from a per-field digest (sha256 of the request digest and the field's
path), so the same request always yields the same instance and sibling fields differ.
Covers what OpenAI's strict mode accepts: objects (all properties emitted), strings (enum,
const, a few formats, min/maxLength; `pattern` is ignored), integers and numbers (bounds,
default 0..100), booleans, null, arrays (minItems default 1, at most 3 unless minItems asks
for more), type lists and anyOf (first non-null branch), and local `$ref`s.
`broken_answer` spoils such an instance on purpose, to exercise repair and dead-lettering.
Errors are `ValueError`s whose message is fit for an HTTP 400 answer.
"""

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 16
DEFAULT_MIN = 0
DEFAULT_MAX = 100
MAX_DEFAULT_ITEMS = 3
NOT_IN_ENUM = "not-in-enum"
BROKEN_JSON = '{"broken": '

Bound = tuple[float, bool]

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "sim@example.com",
    "hostname": "sim.example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/sim",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def schema_instance(schema: Mapping[str, Any], digest: str) -> Any:
    """A deterministic value valid against `schema`, seeded by the hex `digest`."""
    return _Generator(schema, digest).value(schema, "$", "value", 0)


def broken_answer(schema: Mapping[str, Any], digest: str) -> str:
    """JSON text that breaks `schema`: the valid instance with one defect chosen by `digest`.

    The candidate defects are dropping the first required property (in `required` order) and
    setting the first enum-valued top-level property (in `properties` order, local `$ref`s
    followed) to "not-in-enum"; the digest picks one when both apply. A schema offering
    neither gets text that is not JSON at all: `{"broken": `.
    """
    generator = _Generator(schema, digest)
    value = generator.value(schema, "$", "value", 0)
    root = generator.deref(schema)
    if not isinstance(value, dict) or not isinstance(root, Mapping):
        return BROKEN_JSON
    defects: list[dict[str, Any]] = []
    required = root.get("required")
    if isinstance(required, list):
        dropped = next((key for key in required if key in value), None)
        if dropped is not None:
            defects.append({key: item for key, item in value.items() if key != dropped})
    properties = root.get("properties")
    if isinstance(properties, Mapping):
        for key, sub in properties.items():
            enum = _mapping_get(generator.deref(sub), "enum")
            if key in value and isinstance(enum, list) and NOT_IN_ENUM not in enum:
                defects.append({**value, key: NOT_IN_ENUM})
                break
    if not defects:
        return BROKEN_JSON
    return json.dumps(defects[generator._field_digest("$#broken") % len(defects)])


def _mapping_get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else None


class _Generator:
    def __init__(self, root: Mapping[str, Any], digest: str) -> None:
        self._root = root
        self._digest = digest

    def _field_digest(self, path: str) -> int:
        return int(hashlib.sha256(f"{self._digest}:{path}".encode()).hexdigest(), 16)

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise ValueError(f"only local $ref values (#/...) are supported, got {ref!r}")
        node: Any = self._root
        for token in filter(None, ref[1:].split("/")):
            key = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or key not in node:
                raise ValueError(f"$ref {ref!r} does not resolve in the schema")
            node = node[key]
        return node

    def deref(self, schema: Any) -> Any:
        """`schema` with local `$ref`s followed (a chain, not the schema's whole tree)."""
        for _ in range(MAX_DEPTH):
            if not isinstance(schema, Mapping) or "$ref" not in schema:
                return schema
            schema = self._resolve(schema["$ref"])
        raise ValueError(f"$ref chain longer than {MAX_DEPTH} links")

    def value(self, schema: Any, path: str, name: str, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ValueError(f"schema nests deeper than {MAX_DEPTH} levels at {path}")
        if schema is True:
            schema = {}
        if not isinstance(schema, Mapping):
            raise ValueError(f"schema at {path} must be an object")
        if "$ref" in schema:
            return self.value(self._resolve(schema["$ref"]), path, name, depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            enum = schema["enum"]
            if not isinstance(enum, list) or not enum:
                raise ValueError(f"enum at {path} must be a non-empty list")
            return enum[self._field_digest(path) % len(enum)]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branches = schema[key]
                if not isinstance(branches, list) or not branches:
                    raise ValueError(f"{key} at {path} must be a non-empty list")
                chosen = next((b for b in branches if not _is_null_schema(b)), branches[0])
                return self.value(chosen, path, name, depth + 1)
        kind = _schema_type(schema, path)
        if kind == "object":
            return self._object(schema, path, depth)
        if kind == "array":
            return self._array(schema, path, name, depth)
        if kind == "string":
            return self._string(schema, path, name)
        if kind == "integer":
            return self._integer(schema, path)
        if kind == "number":
            return self._number(schema, path)
        if kind == "boolean":
            return self._field_digest(path) % 2 == 0
        if kind == "null":
            return None
        raise ValueError(f"unsupported schema type {kind!r} at {path}")

    def _object(self, schema: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties = schema.get("properties", {})
        if not isinstance(properties, Mapping):
            raise ValueError(f"properties at {path} must be an object")
        return {
            key: self.value(sub, f"{path}.{key}", key, depth + 1) for key, sub in properties.items()
        }

    def _array(self, schema: Mapping[str, Any], path: str, name: str, depth: int) -> list[Any]:
        high = _int_keyword(schema, "maxItems", MAX_DEFAULT_ITEMS, path)
        low = _int_keyword(schema, "minItems", min(1, high), path)
        high = max(low, min(high, MAX_DEFAULT_ITEMS))
        count = low + self._field_digest(f"{path}#len") % (high - low + 1)
        items = schema.get("items", {})
        return [self.value(items, f"{path}[{i}]", name, depth + 1) for i in range(count)]

    def _string(self, schema: Mapping[str, Any], path: str, name: str) -> str:
        digest = f"{self._field_digest(path):064x}"
        fmt = schema.get("format")
        text = _FORMATS[fmt] if isinstance(fmt, str) and fmt in _FORMATS else f"{name} {digest[:6]}"
        min_length = _int_keyword(schema, "minLength", 0, path)
        while len(text) < min_length:
            text += digest
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and not isinstance(max_length, bool):
            cut = text[: max(max_length, min_length)]
            text = cut.rstrip() if len(cut.rstrip()) >= min_length else cut
        return text

    def _integer(self, schema: Mapping[str, Any], path: str) -> int:
        low, low_open, high, high_open = _bounds(schema, path)
        ilow = math.floor(low) + 1 if low_open else math.ceil(low)
        ihigh = math.ceil(high) - 1 if high_open else math.floor(high)
        if ilow > ihigh:
            raise ValueError(f"no integer fits the bounds at {path}")
        return ilow + self._field_digest(path) % (ihigh - ilow + 1)

    def _number(self, schema: Mapping[str, Any], path: str) -> float:
        low, low_open, high, high_open = _bounds(schema, path)
        fraction = (self._field_digest(path) % 10**6) / 10**6
        exact = low + fraction * (high - low)
        if exact == low and low_open:
            exact = (low + high) / 2
        rounded = round(exact, 2)
        above = rounded > low or (rounded == low and not low_open)
        below = rounded < high or (rounded == high and not high_open)
        return rounded if above and below else exact


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _schema_type(schema: Mapping[str, Any], path: str) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        # Nullable fields (["string", "null"]) get a value: more useful downstream.
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema:
            return "object"
        return "array" if "items" in schema else "string"
    if not isinstance(kind, str):
        raise ValueError(f"type at {path} must be a string or a list of strings")
    return kind


def _int_keyword(schema: Mapping[str, Any], key: str, default: int, path: str) -> int:
    value = schema.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{key} at {path} must be a non-negative integer")
    return value


def _limit(schema: Mapping[str, Any], key: str, exclusive_key: str, path: str) -> list[Bound]:
    """Candidate (value, exclusive) bounds; a boolean exclusive_key is the draft-04 form."""
    found: list[Bound] = []
    value = schema.get(key)
    flag = schema.get(exclusive_key)
    if value is not None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{key} at {path} must be a number")
        found.append((float(value), flag is True))
    if flag is not None and not isinstance(flag, bool):
        if not isinstance(flag, int | float):
            raise ValueError(f"{exclusive_key} at {path} must be a number")
        found.append((float(flag), True))
    return found


def _bounds(schema: Mapping[str, Any], path: str) -> tuple[float, bool, float, bool]:
    """(low, low is exclusive, high, high is exclusive); the tightest bound wins."""
    lows = _limit(schema, "minimum", "exclusiveMinimum", path)
    highs = _limit(schema, "maximum", "exclusiveMaximum", path)
    span = DEFAULT_MAX - DEFAULT_MIN
    if not lows:
        top = min((value for value, _ in highs), default=DEFAULT_MAX)
        lows = [(min(DEFAULT_MIN, top - span), False)]
    if not highs:
        bottom = max(value for value, _ in lows)
        highs = [(max(DEFAULT_MAX, bottom + span), False)]
    low, low_open = max(lows)
    high, high_open = min(highs, key=lambda bound: (bound[0], not bound[1]))
    if low > high:
        raise ValueError(f"minimum exceeds maximum at {path}")
    return low, low_open, high, high_open
