"""OrgDataStore: upsert, get, versions, updated_at and validation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmflow.services.orgdata import OrgDataError, OrgDataStore, record_version


@pytest.fixture
def store() -> Iterator[OrgDataStore]:
    with OrgDataStore(":memory:") as s:
        yield s


def test_upsert_and_get(store: OrgDataStore) -> None:
    rows: list[dict[str, Any]] = [
        {"id": "C-1", "name": "Ada", "tier": "pro"},
        {"id": 7, "name": "Bob"},
    ]
    assert store.upsert("customers", rows) == 2
    rec = store.get("customers", "C-1")
    assert rec is not None
    assert rec.data == {"id": "C-1", "name": "Ada", "tier": "pro"}
    assert rec.lineage() == {"table": "customers", "key": "C-1", "version": rec.version}
    assert rec.updated_at.endswith("Z")
    int_key = store.get("customers", "7")
    assert int_key is not None
    assert int_key.data["name"] == "Bob"
    assert store.get("customers", "C-404") is None
    assert store.get("products", "C-1") is None
    assert store.tables() == {"customers": 2}


def test_custom_key_field(store: OrgDataStore) -> None:
    store.upsert("skus", [{"sku": "A1", "qty": 3}], key_field="sku")
    rec = store.get("skus", "A1")
    assert rec is not None
    assert rec.data["qty"] == 3


def test_version_is_content_hash_independent_of_key_order() -> None:
    a = record_version({"id": "1", "x": [1, 2], "y": "é"})
    assert a == record_version({"y": "é", "x": [1, 2], "id": "1"})
    assert len(a) == 16
    assert a != record_version({"id": "1", "x": [2, 1], "y": "é"})


def test_identical_reload_keeps_version_and_updated_at(store: OrgDataStore) -> None:
    store.upsert("customers", [{"id": "C-1", "name": "Ada"}])
    first = store.get("customers", "C-1")
    time.sleep(0.005)  # updated_at has millisecond resolution
    store.upsert("customers", [{"name": "Ada", "id": "C-1"}])
    assert first is not None
    assert store.get("customers", "C-1") == first


def test_changed_data_changes_version_and_updated_at(store: OrgDataStore) -> None:
    store.upsert("customers", [{"id": "C-1", "name": "Ada"}])
    before = store.get("customers", "C-1")
    time.sleep(0.005)
    store.upsert("customers", [{"id": "C-1", "name": "Ada Lovelace"}])
    after = store.get("customers", "C-1")
    assert before is not None
    assert after is not None
    assert after.version != before.version
    assert after.updated_at > before.updated_at
    assert after.data["name"] == "Ada Lovelace"


def test_missing_key_field_names_row_and_field(store: OrgDataStore) -> None:
    rows = [{"id": "a"}, {"id": "b"}, {"name": "no id"}]
    with pytest.raises(OrgDataError, match=r"row 3 has no 'id' field"):
        store.upsert("customers", rows)
    assert store.tables() == {}  # nothing written when one row is bad
    with pytest.raises(OrgDataError, match=r"row 1 has no 'sku' field"):
        store.upsert("customers", [{"id": "a"}], key_field="sku")


def test_unserialisable_row_is_refused(store: OrgDataStore) -> None:
    with pytest.raises(OrgDataError, match="row 1 is not JSON data"):
        store.upsert("customers", [{"id": "a", "when": object()}])


@pytest.mark.parametrize("name", ["Customers", "1abc", "cust-omers", "", "a b", "x;drop"])
def test_table_name_validation(store: OrgDataStore, name: str) -> None:
    with pytest.raises(OrgDataError, match="must match"):
        store.upsert(name, [{"id": "1"}])
    with pytest.raises(OrgDataError, match="must match"):
        store.get(name, "1")


def test_file_store_persists_and_reads_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "org.sqlite"
    with OrgDataStore(path) as store:
        store.upsert("customers", [{"id": str(i), "n": i} for i in range(500)])
        errors: list[BaseException] = []

        def read() -> None:
            try:
                for i in range(500):
                    assert store.get("customers", str(i)) is not None
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=read) for _ in range(4)]
        for t in readers:
            t.start()
        store.upsert("customers", [{"id": str(i), "n": -i} for i in range(500)])
        for t in readers:
            t.join()
        assert errors == []
    with OrgDataStore(path) as reopened:
        assert reopened.tables() == {"customers": 500}
        rec = reopened.get("customers", "7")
        assert rec is not None
        assert rec.data["n"] == -7


def test_unopenable_path_is_an_org_data_error(tmp_path: Path) -> None:
    with pytest.raises(OrgDataError, match="cannot open"):
        OrgDataStore(tmp_path / "missing-dir" / "org.sqlite")
