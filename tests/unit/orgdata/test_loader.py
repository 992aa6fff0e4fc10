"""load_file (.csv, .jsonl) and the bundled samples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmflow.services.orgdata import OrgDataError, OrgDataStore, load_file, load_samples


@pytest.fixture
def store() -> Iterator[OrgDataStore]:
    with OrgDataStore(":memory:") as s:
        yield s


def test_csv_values_stay_strings(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_text('\ufeffid,name,open_tickets\nC-1,"Ada, Countess",3\nC-2,Bob,\n')
    assert load_file(store, "customers", path) == 2
    rec = store.get("customers", "C-1")
    assert rec is not None
    assert rec.data == {"id": "C-1", "name": "Ada, Countess", "open_tickets": "3"}
    bob = store.get("customers", "C-2")
    assert bob is not None
    assert bob.data["open_tickets"] == ""


def test_csv_errors_name_the_line(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,name\nC-1,Ada\n,Nobody\n")
    with pytest.raises(OrgDataError, match=r"c\.csv, line 3: no 'id' field"):
        load_file(store, "customers", path)
    path.write_text("id,name\nC-1,Ada,extra\n")
    with pytest.raises(OrgDataError, match=r"line 2: more cells than the header"):
        load_file(store, "customers", path)
    path.write_text("key,name\nC-1,Ada\n")
    with pytest.raises(OrgDataError, match=r"header has no 'id' column"):
        load_file(store, "customers", path)
    assert store.tables() == {}


def test_jsonl_keeps_types(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "products.jsonl"
    path.write_text(
        '{"sku": "P-1", "price_eur": 9.5, "restricted": true, "text": "a\u2028b"}\n\n'
        '{"sku": "P-2", "price_eur": 3, "restricted": false}\n',
        encoding="utf-8",
    )
    assert load_file(store, "products", path, key_field="sku") == 2
    rec = store.get("products", "P-1")
    assert rec is not None
    assert rec.data == {"sku": "P-1", "price_eur": 9.5, "restricted": True, "text": "a\u2028b"}


def test_bad_jsonl_line_names_file_and_line(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "customers.jsonl"
    path.write_text('{"id": "C-1"}\n\n{"id": "C-2",\n')
    with pytest.raises(OrgDataError, match=r"customers\.jsonl, line 3: invalid JSON"):
        load_file(store, "customers", path)
    path.write_text('{"id": "C-1"}\n["C-2"]\n')
    with pytest.raises(OrgDataError, match=r"line 2: expected a JSON object, got list"):
        load_file(store, "customers", path)
    assert store.tables() == {}


def test_unsupported_or_missing_file(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "customers.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(OrgDataError, match=r"unsupported file type '\.xlsx'"):
        load_file(store, "customers", path)
    with pytest.raises(OrgDataError, match="cannot read"):
        load_file(store, "customers", tmp_path / "absent.jsonl")


def test_reload_of_same_file_keeps_versions(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "customers.jsonl"
    path.write_text('{"id": "C-1", "tier": "pro"}\n')
    load_file(store, "customers", path)
    first = store.get("customers", "C-1")
    load_file(store, "customers", path)
    assert store.get("customers", "C-1") == first
    path.write_text('{"id": "C-1", "tier": "enterprise"}\n')
    load_file(store, "customers", path)
    changed = store.get("customers", "C-1")
    assert first is not None
    assert changed is not None
    assert changed.version != first.version


def test_load_samples(store: OrgDataStore) -> None:
    assert load_samples(store) == {"customers": 24, "policies": 6, "products": 24}
    assert store.tables() == {"customers": 24, "policies": 6, "products": 24}
    for key in ("C-1001", "C-1024"):
        assert store.get("customers", key) is not None
    for key in ("P-2001", "P-2024"):
        assert store.get("products", key) is not None
    customer = store.get("customers", "C-1001")
    assert customer is not None
    assert customer.data["tier"] in {"free", "pro", "enterprise"}
    assert isinstance(customer.data["open_tickets"], int)
    restricted = [
        rec.data["name"]
        for i in range(2001, 2025)
        if (rec := store.get("products", f"P-{i}")) is not None and rec.data["restricted"]
    ]
    assert 0 < len(restricted) < 24
    policy_ids = {f"POL-{s}" for s in ("REFUND", "IMAGE-CONTENT", "TONE", "ESCALATION-ENTERPRISE")}
    assert all(store.get("policies", pid) is not None for pid in policy_ids)
