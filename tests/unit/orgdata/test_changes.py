"""Records of an org-data topic: plain, Debezium (with and without the schema wrapper),
tombstones, passages; anything else is rejected with a reason."""

from __future__ import annotations

import json

import pytest

from llmflow.services.orgdata.changes import (
    MAX_UNCHECKED_BYTES,
    MAX_UNCHECKED_NESTING,
    Delete,
    Rejected,
    Upsert,
    decode,
    unchecked,
)

ROW = {"id": 42, "name": "Ada", "tier": "pro"}


def _debezium(op: str, before: object, after: object, wrapped: bool = False) -> bytes:
    payload = {
        "before": before,
        "after": after,
        "op": op,
        "source": {"table": "customers"},
        "ts_ms": 1,
    }
    value = {"schema": {"type": "struct"}, "payload": payload} if wrapped else payload
    return json.dumps(value).encode()


def _passages_of(vector: str, dimensions: int = 2) -> bytes:
    block = {"model": "m", "dimensions": dimensions, "passages": [{"text": "t", "vector": vector}]}
    return json.dumps({"_llmflow": block}).encode()


def test_plain_records_and_tombstones() -> None:
    change = decode(b"C-1", b'{"id": "C-1", "tier": "pro"}')
    assert isinstance(change, Upsert)
    assert (change.key, change.data, change.passages) == ("C-1", {"id": "C-1", "tier": "pro"}, None)
    assert len(change.version) == 16
    assert decode(b"C-1", b'{"tier": "pro", "id": "C-1"}').version != change.version  # type: ignore[union-attr]
    assert decode(b"C-1", None) == Delete("C-1")
    # The topic's key names the row, whatever the value says.
    other = decode(b"C-2", b'{"id": "C-1"}')
    assert isinstance(other, Upsert) and other.key == "C-2"


@pytest.mark.parametrize("wrapped", [False, True])
def test_debezium_change_events(wrapped: bool) -> None:
    key = json.dumps({"id": 42}).encode()
    if wrapped:
        key = json.dumps({"schema": {}, "payload": {"id": 42}}).encode()
    for op in ("c", "r", "u"):
        change = decode(key, _debezium(op, None, ROW, wrapped))
        assert isinstance(change, Upsert) and change.key == "42" and change.data == ROW
    assert decode(key, _debezium("d", ROW, None, wrapped)) == Delete("42")
    assert decode(key, None) == Delete("42")  # the tombstone after a delete
    assert decode(key, _debezium("t", None, None, wrapped)) is None
    # Without a key, the row's id names it.
    assert decode(None, _debezium("u", ROW, ROW, wrapped)) == decode(key, _debezium("c", None, ROW))


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"K", b"not json", "the value is not JSON"),
        (b"K", b"[1, 2]", "the value is a JSON list, not an object"),
        (b"K", b'{"n": NaN}', "the value is not JSON"),
        (b"K", b'{"after": {"n": -Infinity}, "op": "c"}', "the value is not JSON"),
        (None, None, "a tombstone without a key"),
        (None, b'{"name": "x"}', "a record without a key or a 'id' field"),
        (b"\xff\xfe", b"{}", "the key is not UTF-8"),
        (b"", b"{}", "the key is empty"),
        (b'{"a": 1, "b": 2}', b"{}", "a JSON key must be an object with one field"),
        (b'{"id": true}', b"{}", "the key's field must be a non-empty string or an integer"),
        (b"K", b'{"op": "c", "after": null, "before": null}', "a Debezium 'c' event without"),
        (b"K", b"[" * 100_000 + b"]" * 100_000, "the value is not JSON"),
        (b"K", _passages_of("AAAAAA=="), "passage 0: the vector has 1 values, not 2"),
        (b"K", _passages_of("AAAAAAAAwH8="), "passage 0: the vector holds NaN or infinity"),
        (b"K", _passages_of("not base64!"), "passage 0: the vector is not base64"),
        (b"K", b'{"_llmflow": []}', "_llmflow must be an object"),
    ],
)
def test_what_cannot_be_applied_says_why(
    key: bytes | None, value: bytes | None, reason: str
) -> None:
    with pytest.raises(Rejected) as info:
        decode(key, value)
    assert info.value.reason.startswith(reason), info.value.reason


# --- the unchecked path: taken only where `decode` would read a plain upsert -----------------

# Change events, wrapped values and passages are taken: the store turns them down (see
# test_store), where it has parsed the value anyway.
_NOT_TAKEN = [
    (b"C-1", b'{"\\u006fp": "c", "after": {"id": 1}}'),  # an escaped "op"
    (b"C-1", b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}"),
    (b"C-1", b' {"a": 1}'),
    (b"C-1", b"[1, 2]"),
    (b"C-1", b'{"a": 1}\x00{'),  # SQLite would read up to the NUL only
    (b"C-1", b'{"n": ' + b"9" * 5000 + b"}"),  # too many digits for Python's json
    (b"C-1", None),
    (None, b'{"id": "C-1"}'),
    (b"", b'{"id": "C-1"}'),
    (b'{"id": 1}', b'{"id": 1}'),
    (b"\xff", b'{"a": 1}'),
    (b"C-1", b'{"a": "\xff"}'),
]


@pytest.mark.parametrize(("key", "value"), _NOT_TAKEN)
def test_only_certain_plain_records_go_unchecked(key: bytes | None, value: bytes | None) -> None:
    assert unchecked(key, value) is None


@pytest.mark.parametrize(
    "value",
    [
        json.dumps(ROW).encode(),
        b'{"a": {"b": [1, {"c": null}]}, "n": 1e400, "s": "caf\xc3\xa9 \xe2\x80\xa8"}',
        b'{"op_code": "x", "schema_name": "y", "payloads": []}\n',
    ],
)
def test_an_unchecked_record_is_what_decode_makes_of_it(value: bytes) -> None:
    taken, decoded = unchecked(b"C-1", value), decode(b"C-1", value)
    assert taken is not None and isinstance(decoded, Upsert)
    assert (taken.key, taken.version, taken.value.decode()) == (
        decoded.key,
        decoded.version,
        decoded.text,
    )


def test_unchecked_leaves_invalid_json_to_the_store() -> None:
    """Not parsed here: the store's json_valid() turns it down and the batch is decoded."""
    assert unchecked(b"C-1", b"{not json") is not None


@pytest.mark.parametrize("op", [[], {}, 1, None, True])
def test_an_op_field_that_is_not_a_debezium_op_makes_a_plain_record(op: object) -> None:
    change = decode(b"C-1", json.dumps({"op": op, "after": {"id": 1}}).encode())
    assert isinstance(change, Upsert) and change.data == {"op": op, "after": {"id": 1}}


def test_values_nested_past_the_limit_are_decoded() -> None:
    """SQLite accepts nesting Python's json module cannot read back: the byte check keeps
    deep values away from it (the limit counts every `{` and `[`)."""
    inside = MAX_UNCHECKED_NESTING - 1  # the outer object opens one
    at_limit = b'{"a": ' + b"[" * inside + b"]" * inside + b"}"
    assert unchecked(b"K", at_limit) is not None
    assert unchecked(b"K", at_limit.replace(b"[", b"[[", 1).replace(b"]", b"]]", 1)) is None


def test_the_longest_unchecked_value() -> None:
    """Python's json module refuses integers over 4,300 digits, which SQLite accepts."""
    value = b'{"n": ' + b"9" * (MAX_UNCHECKED_BYTES - 7) + b"}"
    assert len(value) == MAX_UNCHECKED_BYTES and unchecked(b"K", value) is not None
    assert unchecked(b"K", value[:-1] + b"9}") is None
