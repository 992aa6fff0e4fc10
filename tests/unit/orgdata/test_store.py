"""The worker's copy: records and offsets applied together, deletes, a collection's
passages in the keyword and vector indexes, reopening from the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmflow.services.orgdata.changes import Change, Delete, Rejected, Upsert, decode, unchecked
from llmflow.services.orgdata.store import NotPlain, OrgDataStore, stored_data
from llmflow.topologies.collections import Collection, Embedding
from tests.unit.orgdata.helpers import apply_records

DOCS = Collection(
    name="docs",
    chunk_words=8,
    overlap_words=2,
    embedding=Embedding(model="sim-embed", dimensions=64),
    filters=["language"],
    tenant_field="tenant",
)


def test_records_offsets_and_deletes_apply_together(tmp_path: Path) -> None:
    with OrgDataStore(tmp_path / "org.sqlite3") as store:
        apply_records(store, "customers", [{"id": "C-1", "tier": "pro"}, {"id": "C-2"}])
        record = store.get("customers", "C-1")
        assert record is not None
        assert (record.data, record.partition, record.offset) == (
            {"id": "C-1", "tier": "pro"},
            0,
            0,
        )
        assert store.positions("customers") == {0: 2}
        apply_records(store, "customers", [{"id": "C-1", "tier": "free"}], deletes=["C-2"])
        updated = store.get("customers", "C-1")
        assert updated is not None and updated.data["tier"] == "free" and updated.offset == 2
        assert updated.version != record.version
        assert store.get("customers", "C-2") is None
        assert store.positions("customers") == {0: 4}
        assert store.get("products", "C-1") is None  # tables are apart
    # A restart resumes from what was applied.
    with OrgDataStore(tmp_path / "org.sqlite3") as reopened:
        assert reopened.positions("customers") == {0: 4}
        assert reopened.tables() == {"customers": 1}


def test_the_last_change_of_a_key_in_a_batch_wins() -> None:
    with OrgDataStore(":memory:") as store:
        upsert = decode(b"K", b'{"v": 1}')
        delete = decode(b"K", None)
        again = decode(b"K", b'{"v": 2}')
        assert isinstance(upsert, Upsert) and isinstance(delete, Delete)
        assert again is not None
        store.apply("t", 0, [(0, upsert), (1, delete)], 2)
        assert store.get("t", "K") is None
        store.apply("t", 0, [(2, delete), (3, again)], 4)
        found = store.get("t", "K")
        assert found is not None and found.data == {"v": 2} and found.offset == 3


def test_clear_forgets_a_table_and_its_offsets() -> None:
    with OrgDataStore(":memory:", {"docs": DOCS}) as store:
        apply_records(store, "docs", [{"id": "D-1", "text": "alpha beta gamma"}])
        apply_records(store, "customers", [{"id": "C-1"}])
        store.clear("docs")
        assert store.tables() == {"customers": 1}
        assert store.positions("docs") == {}
        assert len(store.indexes["docs"]) == 0
        assert store.indexes["docs"].keyword(["alpha"], 5, None, {}) == []


def test_passages_are_replaced_with_their_record(tmp_path: Path) -> None:
    words = " ".join(f"w{n}" for n in range(20))
    with OrgDataStore(tmp_path / "org.sqlite3", {"docs": DOCS}) as store:
        apply_records(store, "docs", [{"id": "D-1", "title": "Knife care", "text": words}])
        passages = store.passages_of("docs", "D-1")
        # 22 words in windows of 8 that overlap by 2: starts 0, 6, 12, 18
        assert [p.n for p in passages] == [0, 1, 2, 3]
        assert passages[0].text.startswith("Knife care w0")
        assert len(store.indexes["docs"]) == 4
        apply_records(store, "docs", [{"id": "D-1", "text": "short now"}])
        assert [p.text for p in store.passages_of("docs", "D-1")] == ["short now"]
        assert len(store.indexes["docs"]) == 1
        assert store.indexes["docs"].keyword(["w5"], 5, None, {}) == []
        apply_records(store, "docs", [], deletes=["D-1"])
        assert store.passages_of("docs", "D-1") == []
        assert len(store.indexes["docs"]) == 0
    # Reopened: the vectors come back from the file.
    with OrgDataStore(tmp_path / "org.sqlite3", {"docs": DOCS}) as store:
        apply_records(store, "docs", [{"id": "D-2", "text": "one two three"}])
    with OrgDataStore(tmp_path / "org.sqlite3", {"docs": DOCS}) as store:
        assert len(store.indexes["docs"]) == 1
        assert [pid for pid, _ in store.indexes["docs"].keyword(["two"], 5, None, {})] == [
            p.id for p in store.passages_of("docs", "D-2")
        ]


def test_new_filter_fields_apply_to_stored_passages(tmp_path: Path) -> None:
    with OrgDataStore(tmp_path / "org.sqlite3", {"docs": DOCS}) as store:
        apply_records(
            store, "docs", [{"id": "D-1", "text": "refund", "region": "eu", "language": "en"}]
        )
    wider = DOCS.model_copy(update={"filters": ["language", "region"]})
    with OrgDataStore(tmp_path / "org.sqlite3", {"docs": wider}) as store:
        assert len(store.indexes["docs"].keyword(["refund"], 5, None, {"region": "eu"})) == 1
        assert store.indexes["docs"].keyword(["refund"], 5, None, {"region": "us"}) == []


@pytest.mark.parametrize("private", [True, False])
def test_reads_from_other_threads_see_committed_batches(tmp_path: Path, private: bool) -> None:
    import threading

    path = ":memory:" if private else tmp_path / "org.sqlite3"
    with OrgDataStore(path) as store:
        apply_records(store, "t", [{"id": "A"}])
        seen: list[object] = []
        reader = threading.Thread(target=lambda: seen.append(store.get("t", "A")))
        reader.start()
        reader.join()
        assert seen and seen[0] is not None


def test_a_store_in_an_older_layout_is_emptied_and_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    path = tmp_path / "org.sqlite3"
    # The first layout: records clustered on their key, keyword search in FTS5.
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE records (tbl TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL,"
            " partition INTEGER NOT NULL, offset INTEGER NOT NULL, data TEXT NOT NULL,"
            " PRIMARY KEY (tbl, key)) WITHOUT ROWID;"
            "CREATE TABLE positions (tbl TEXT NOT NULL, partition INTEGER NOT NULL,"
            " next_offset INTEGER NOT NULL, PRIMARY KEY (tbl, partition)) WITHOUT ROWID;"
            "CREATE VIRTUAL TABLE fts_docs USING fts5(text, tenant UNINDEXED);"
            "INSERT INTO records VALUES ('t', 'K', 'v', 0, 0, '{}');"
            "INSERT INTO positions VALUES ('t', 0, 1);"
        )
    with OrgDataStore(path, {"docs": DOCS}) as store:
        assert store.positions("t") == {}  # so the materializer reads the topic again
        assert store.get("t", "K") is None
        apply_records(store, "t", [{"id": "K2", "v": 1}])
    assert "is read again from the topics" in caplog.text
    caplog.clear()
    with OrgDataStore(path, {"docs": DOCS}) as store:  # now in this layout: kept
        assert store.get("t", "K2") is not None
        assert store.positions("t") == {0: 1}
    assert "read again" not in caplog.text
    with sqlite3.connect(path) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert not any(name.startswith("fts_") for name in names)


def test_when_a_table_was_last_in_step_is_kept_until_it_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "org.sqlite3"
    with OrgDataStore(path) as store:
        assert store.synced_at("t") is None
        store.mark_synced(["t", "u"], 1_700_000_000.5)
        store.mark_synced(["t"], 1_700_000_100.0)
    with OrgDataStore(path) as store:
        assert store.synced_at("t") == 1_700_000_100.0
        assert store.synced_at("u") == 1_700_000_000.5
        store.clear("t")
        assert store.synced_at("t") is None and store.synced_at("u") is not None


@pytest.mark.parametrize("value", [b"{not json", b'{"a": NaN}', b'{"a": 1,}', b'{"a": 1} {}'])
def test_a_batch_with_an_unchecked_value_that_is_not_json_applies_nothing(value: bytes) -> None:
    with OrgDataStore(":memory:") as store:
        good, bad = unchecked(b"K1", b'{"v": 1}'), unchecked(b"K2", value)
        assert good is not None and bad is not None
        store.apply("t", 0, [(0, good)], 1)
        with pytest.raises(NotPlain):
            store.apply("t", 0, [(1, unchecked(b"K1", b'{"v": 2}') or good), (2, bad)], 3)
        found = store.get("t", "K1")
        assert found is not None and found.data == {"v": 1}
        assert store.get("t", "K2") is None and store.positions("t") == {0: 1}


@pytest.mark.parametrize(
    "value",
    [
        b'{"op": "c", "before": null, "after": {"id": "K", "v": 2}, "source": {}}',
        b'{"schema": {"type": "struct"}, "payload": {"op": "d", "before": {"id": "K"}}}',
        b'{"id": "K", "_llmflow": {"model": "m", "dimensions": 2, "passages": []}}',
        b'{"op": "x", "v": 2}',  # not a change event, but only decoding says so
    ],
)
def test_a_batch_with_a_record_that_may_not_be_plain_applies_nothing(value: bytes) -> None:
    """Taken unchecked (no escape, no NUL), it is turned down by the store, which has
    parsed it anyway: the batch is then decoded in full."""
    with OrgDataStore(":memory:") as store:
        taken = unchecked(b"K", value)
        assert taken is not None
        with pytest.raises(NotPlain):
            store.apply("t", 0, [(0, taken)], 1)
        assert store.get("t", "K") is None and store.positions("t") == {}


def test_fields_of_a_change_event_inside_a_record_keep_it_plain() -> None:
    value = b'{"id": "K", "audit": {"op": "c", "payload": 1, "_llmflow": 2}, "ops": ["op"]}'
    taken, decoded = unchecked(b"K", value), decode(b"K", value)
    assert taken is not None and decoded is not None
    with OrgDataStore(":memory:") as one, OrgDataStore(":memory:") as other:
        one.apply("t", 0, [(0, taken)], 1)
        other.apply("t", 0, [(0, decoded)], 1)
        assert one.get("t", "K") == other.get("t", "K") is not None


def test_an_unchecked_record_is_stored_as_its_decoded_self() -> None:
    value = b'{"id": "K", "tags": ["a"], "n": 1.5}'
    taken, decoded = unchecked(b"K", value), decode(b"K", value)
    assert taken is not None and decoded is not None
    with OrgDataStore(":memory:") as one, OrgDataStore(":memory:") as other:
        one.apply("t", 3, [(7, taken)], 8)
        other.apply("t", 3, [(7, decoded)], 8)
        assert one.get("t", "K") == other.get("t", "K") is not None


def test_a_batch_of_unchecked_records_is_stored_as_each_decoded_record() -> None:
    """The batch goes in as one statement that slices keys and values out of a blob: keys
    and values of every length and script land whole, and a key's last record wins."""
    records = [
        (b"K", b'{"v": 1}'),
        ("Ключ-ü".encode(), '{"name": "café ☕", "n": [1, {"x": "ß"}]}'.encode()),
        ("キー 🔑".encode(), b'{"big": 12345678901234567890123}'),
        (b"L" * 300, b'{"s": "' + b"z" * 3000 + b'"}'),
        (b"K", b'{"v": 2}'),
    ]
    offsets = [0, 7, 2**40, 2**62, 2**62 + 1]
    taken = [(o, unchecked(k, v)) for o, (k, v) in zip(offsets, records, strict=True)]
    decoded = [(o, decode(k, v)) for o, (k, v) in zip(offsets, records, strict=True)]
    assert all(change is not None for _, change in taken + decoded)
    with OrgDataStore(":memory:") as one, OrgDataStore(":memory:") as other:
        one.apply("t", 5, taken, 2**62 + 2)  # type: ignore[arg-type]
        other.apply("t", 5, decoded, 2**62 + 2)  # type: ignore[arg-type]
        assert one.tables() == {"t": 4}
        for raw_key, _ in records:
            key = raw_key.decode()
            assert one.get("t", key) == other.get("t", key) is not None
        found = one.get("t", "K")
        assert found is not None and found.data == {"v": 2} and found.offset == 2**62 + 1
        assert one.records("t") == other.records("t")


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.sampled_from(["c", "u", "d", "r", "t"])  # Debezium's ops
)
# Field names of change events, converter wrappers and passages blocks, and any others
_FIELDS = st.sampled_from(["op", "after", "before", "schema", "payload", "_llmflow"]) | st.text()
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_FIELDS, inner, max_size=3),
    max_leaves=8,
)
_VALUES = (
    st.none()  # a tombstone
    | st.dictionaries(_FIELDS, _JSON, max_size=4).map(
        lambda data: json.dumps(data, ensure_ascii=False).encode()
    )
    | st.binary(max_size=40).map(lambda raw: b"{" + raw)  # hostile: maybe not JSON, not UTF-8
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["K", "Ключ", "キー 🔑", "k" * 30]), _VALUES), max_size=12)
)
def test_any_batch_ends_as_if_each_record_had_been_decoded(
    records: list[tuple[str, bytes | None]],
) -> None:
    """What the materializer does (records taken unchecked where they may be plain; the
    batch decoded in full if SQLite turns one down) stores what decoding each would."""

    def decoded(key: bytes, value: bytes | None) -> Change | None:
        try:
            return decode(key, value)
        except Rejected:
            return None

    raw = [(key.encode(), value) for key, value in records]
    quick = [(n, unchecked(k, v) or decoded(k, v)) for n, (k, v) in enumerate(raw)]
    full = [(n, decoded(k, v)) for n, (k, v) in enumerate(raw)]
    with OrgDataStore(":memory:") as one, OrgDataStore(":memory:") as other:
        one.apply("t", 0, [(0, Upsert("K", {}, "v0", None, "{}"))], 0)
        other.apply("t", 0, [(0, Upsert("K", {}, "v0", None, "{}"))], 0)
        try:
            one.apply("t", 0, [(n, c) for n, c in quick if c is not None], len(raw))
        except NotPlain:
            one.apply("t", 0, [(n, c) for n, c in full if c is not None], len(raw))
        other.apply("t", 0, [(n, c) for n, c in full if c is not None], len(raw))
        assert one.records("t") == other.records("t")
        for key, _ in records:
            assert one.get("t", key) == other.get("t", key)
        assert one.positions("t") == other.positions("t") == {0: len(raw)}


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1e400, "b": 123456789012345678901234567890, "c": -0.0, "d": [1, {"e": null}]}',
        '{"s": "caf\\u00e9 \\u2028 ☕", "a": 1, "a": 2}',
        '{"lone": "\\ud800"}',  # pydantic-core refuses it: json.loads reads it
    ],
)
def test_stored_data_reads_what_json_loads_reads(text: str) -> None:
    assert stored_data(text) == json.loads(text)
