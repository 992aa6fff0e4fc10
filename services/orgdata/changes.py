"""What one record of an org-data topic means: an upsert, a delete, or nothing to apply.

A topic takes two shapes of record, so a CDC pipeline feeds it as directly as the loader:
- plain: key = the record id (text), value = the JSON record, no value = delete;
- Debezium change events: `before`/`after`/`op`, with or without the JSON converter's
  `schema`/`payload` wrapper, keyed by the row's primary key as JSON (`{"id": 42}`).
  `c`, `u`, `r` (snapshot) upsert `after`; `d` deletes; `t` and `m` change no row.

A document collection's record also carries its passages and their embeddings, as the
loader made them, under `_llmflow` (see `documents`); that block is not part of the data.
Anything else is `Rejected`, with the reason: the materializer logs it and goes on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import pydantic_core

from llmflow.services.orgdata.documents import CHUNKS_FIELD, BadPassages, Passage, passages_of

_DEBEZIUM_OPS = {"c", "u", "r", "d", "t", "m"}


class Rejected(Exception):
    """A record that cannot be applied; `reason` says why, in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Upsert:
    key: str
    data: dict[str, Any]
    """The record's fields, without the passages block."""
    version: str
    """Content hash: the first 16 hex digits of the SHA-256 of the record's JSON."""
    passages: list[Passage] | None
    """A collection's passages with their embeddings; None when the record has none."""
    text: str
    """`data` as JSON, as stored."""


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


class Unchecked(NamedTuple):
    """A record taken as it came, to be stored if it turns out to be a plain one: the store
    checks that in SQLite, away from the GIL (see `unchecked`)."""

    key: str
    version: str
    value: bytes
    """The record's JSON as it came: UTF-8."""


Change = Upsert | Delete | Unchecked

MAX_UNCHECKED_BYTES = 4096
"""Longer values are decoded: Python's json module refuses integers of more than 4,300
digits, which SQLite accepts."""
MAX_UNCHECKED_NESTING = 128
"""Objects and arrays an `Unchecked` value may open: SQLite accepts JSON nested 1,000 deep,
where Python's json module cannot read it back and `decode` rejects it."""
PLAIN_EXCLUDES = ("op", "payload", CHUNKS_FIELD)
"""Top-level fields of a record that may not be a plain one (a Debezium `op`, the JSON
converter's wrapper, a passages block): the store looks for them in SQLite, which has
parsed the value already to check it (`store._UPSERT_UNCHECKED`)."""


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_version(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def unchecked(key: bytes | None, value: bytes | None) -> Unchecked | None:
    """The record as it came, if it may be a plain upsert; None: `decode` it.

    Parsing 1 KB of JSON in Python took as long as reading and storing it, all of it
    holding the GIL. Here a value that starts with `{` is taken as it is, unless it holds
    a backslash (an escape could spell one of `PLAIN_EXCLUDES`, where SQLite compares field
    names as written) or a NUL (SQLite reads a text only up to its first one). The store
    checks in SQLite that it is valid JSON (an object, then) without a field of
    `PLAIN_EXCLUDES`; a batch with one that is not is decoded in full, each record skipped
    with its reason if it has one (`NotPlain`). A value replaced by a later record of its
    key in the same batch is not checked at all, as compaction would have dropped it.
    """
    if key is None or value is None or key[:1] in (b"{", b"") or value[:1] != b"{":
        return None
    # find(), not `in`: a third of the time for a single byte
    if len(value) > MAX_UNCHECKED_BYTES or value.find(b"\\") >= 0 or value.find(b"\x00") >= 0:
        return None
    if value.count(b"{") + value.count(b"[") > MAX_UNCHECKED_NESTING:
        return None  # maybe too deep to read back (`decode` rejects it, with its reason)
    try:
        if not value.isascii():  # most are: a check many times faster than a decode
            value.decode()
        return Unchecked(key.decode(), content_version(value), value)
    except UnicodeDecodeError:
        return None


def decode(key: bytes | None, value: bytes | None, key_field: str = "id") -> Upsert | Delete | None:
    """The change a record makes (None: it changes no row); raises `Rejected`."""
    record_key = _record_key(key)
    if value is None:
        if record_key is None:
            raise Rejected("a tombstone without a key")
        return Delete(record_key)
    data = _parse(value, "value")
    if not isinstance(data, dict):
        raise Rejected(f"the value is a JSON {type(data).__name__}, not an object")
    envelope = _unwrapped(data)
    if _is_debezium(envelope):
        return _debezium(record_key, envelope, key_field)
    return _plain(record_key, data, value, key_field)


def _record_key(key: bytes | None) -> str | None:
    if key is None:
        return None
    if key[:1] != b"{":
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Rejected("the key is not UTF-8") from exc
        if not text:
            raise Rejected("the key is empty")
        return text
    # A Debezium key: the primary key's columns as JSON, maybe in a schema/payload wrapper.
    fields = _unwrapped(_parse(key, "key"))
    if not isinstance(fields, dict) or len(fields) != 1:
        raise Rejected("a JSON key must be an object with one field (the primary key)")
    return _key_text(next(iter(fields.values())), "the key's field")


def _parse(raw: bytes, what: str) -> Any:
    # NaN and infinities are no JSON numbers: a consumer of the outputs could not read them
    # back, and the loader and SQLite's json_valid() refuse them too.
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False, cache_strings=False)
    except ValueError as exc:
        raise Rejected(f"the {what} is not JSON: {str(exc)[:200]}") from exc


def _unwrapped(data: Any) -> Any:
    """The payload of the JSON converter's `{"schema": ..., "payload": ...}` wrapper."""
    if isinstance(data, dict) and data.keys() == {"schema", "payload"}:
        return data["payload"]
    return data


def _is_debezium(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(op := data.get("op"), str)
        and op in _DEBEZIUM_OPS
        and ("after" in data or "before" in data)
    )


def _key_text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise Rejected(f"{what} must be a non-empty string or an integer")
    return str(value)


def _debezium(
    record_key: str | None, event: dict[str, Any], key_field: str
) -> Upsert | Delete | None:
    op = event["op"]
    if op in ("t", "m"):
        return None  # a truncate or a logical message names no row
    row = event.get("before") if op == "d" else event.get("after")
    if not isinstance(row, dict):
        side = "before" if op == "d" else "after"
        if op == "d" and record_key is not None:
            return Delete(record_key)
        raise Rejected(f"a Debezium {op!r} event without its {side!r} row")
    key = record_key  # the topic's key names the row: compaction keeps one value per key
    if key is None and key_field in row:
        key = _key_text(row[key_field], f"field {key_field!r}")
    if key is None:
        raise Rejected(f"a Debezium event without a key or a {key_field!r} field")
    if op == "d":
        return Delete(key)
    text = canonical_json(row)
    return Upsert(key, row, content_version(text.encode()), None, text)


def _plain(record_key: str | None, data: dict[str, Any], raw: bytes, key_field: str) -> Upsert:
    if record_key is None and key_field in data:
        record_key = _key_text(data[key_field], f"field {key_field!r}")
    if record_key is None:
        raise Rejected(f"a record without a key or a {key_field!r} field")
    passages = None
    text = raw.decode("utf-8", "replace")  # it parsed as JSON, so it is UTF-8
    if CHUNKS_FIELD in data:
        try:
            passages = passages_of(data.pop(CHUNKS_FIELD))
        except BadPassages as exc:
            raise Rejected(str(exc)) from exc
        text = canonical_json(data)
    return Upsert(record_key, data, content_version(raw), passages, text)
