"""Reading org data files (.csv, .jsonl) strictly, and the bundled samples; what a worker
holds once a file is published (`load_file` below: read, then applied as published)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmflow.services.cli import main
from llmflow.services.orgdata import OrgDataError, OrgDataStore, sample_records
from llmflow.services.orgdata.loader import OrgDataFileError, read_records
from tests.unit.orgdata.helpers import apply_records


def load_file(
    store: OrgDataStore, table: str, path: Path, key_field: str = "id", *, last_wins: bool = False
) -> int:
    return apply_records(
        store, table, read_records(path, key_field, last_wins=last_wins), key_field
    )


def load_samples(store: OrgDataStore) -> dict[str, int]:
    return {table: apply_records(store, table, rows) for table, rows in sample_records().items()}


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
    with pytest.raises(OrgDataError, match=r"c\.csv:3: no 'id' field"):
        load_file(store, "customers", path)
    path.write_text("id,name\nC-1,Ada,extra\n")
    with pytest.raises(OrgDataError, match=r":2: more cells than the header"):
        load_file(store, "customers", path)
    path.write_text("key,name\nC-1,Ada\n")
    with pytest.raises(OrgDataError, match=r":1: the header has no 'id' column"):
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
    with pytest.raises(OrgDataError, match=r"customers\.jsonl:3: invalid JSON"):
        load_file(store, "customers", path)
    path.write_text('{"id": "C-1"}\n["C-2"]\n')
    with pytest.raises(OrgDataError, match=r":2: expected a JSON object, got list"):
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
    again = store.get("customers", "C-1")
    assert first is not None and again is not None
    # Published again: a new offset, the same content hash.
    assert (again.version, again.data, again.offset) == (first.version, first.data, 1)
    path.write_text('{"id": "C-1", "tier": "enterprise"}\n')
    load_file(store, "customers", path)
    changed = store.get("customers", "C-1")
    assert first is not None
    assert changed is not None
    assert changed.version != first.version


def test_load_samples(store: OrgDataStore) -> None:
    assert load_samples(store) == {"customers": 24, "policies": 47, "products": 24}
    assert store.tables() == {"customers": 24, "policies": 47, "products": 24}
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


# -- strictness: every refusal names the file and the line, and nothing is written ---------


def _refused(store: OrgDataStore, path: Path, line: int | None, reason: str) -> None:
    """Loading `path` fails with `<file>:<line>: <reason...>` and leaves the store as it was."""
    before = store.tables()
    with pytest.raises(OrgDataFileError) as info:
        load_file(store, "customers", path)
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(info.value).startswith(where + reason), str(info.value)[:300]
    assert (info.value.line, "\n" in str(info.value)) == (line, False)
    assert store.tables() == before


def test_csv_unterminated_quote_is_an_error_not_one_record(
    store: OrgDataStore, tmp_path: Path
) -> None:
    path = tmp_path / "c.csv"
    path.write_text('id,name\nC-1,Ada\nC-2,"Bob\nC-3,Cy\nC-4,Dee\n')
    _refused(store, path, 3, "unterminated quoted field")
    # Closed further down by a stray quote: the record spans lines 2-3, then breaks.
    path.write_text('id,name\nC-1,"Ada\nC-2,"Bob"\nC-3,Cy\n')
    _refused(store, path, 2, "malformed CSV: ',' expected after '\"' (on line 3)")
    # Quoted newlines and doubled quotes are CSV: they still load.
    path.write_text('id,name\r\nC-1,"Ada\r\nLovelace"\r\nC-2,"say ""hi"""\r\n')
    assert load_file(store, "customers", path) == 2
    rec = store.get("customers", "C-2")
    assert rec is not None and rec.data["name"] == 'say "hi"'


@pytest.mark.parametrize(
    ("name", "text", "key", "first", "second"),
    [
        ("c.csv", "id,name\nC-1,Ada\nC-2,Bob\n\nC-1,Again\n", "C-1", 2, 5),
        ("c.jsonl", '{"id": "C-1"}\n{"id": "C-2"}\n{"id": "C-1", "n": 2}\n', "C-1", 1, 3),
        ("c.jsonl", '{"id": 7}\n{"id": "7"}\n', "7", 1, 2),  # both are key "7" in the store
    ],
)
def test_duplicate_keys_name_both_lines(
    store: OrgDataStore, tmp_path: Path, name: str, text: str, key: str, first: int, second: int
) -> None:
    path = tmp_path / name
    path.write_text(text)
    _refused(store, path, second, f"duplicate id {key!r}, first on line {first} (--last-wins")


def test_last_wins_keeps_the_last_record(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "C-1", "n": 1}\n{"id": "C-2"}\n{"id": "C-1", "n": 3}\n')
    assert load_file(store, "customers", path, last_wins=True) == 2
    rec = store.get("customers", "C-1")
    assert rec is not None and rec.data == {"id": "C-1", "n": 3}
    assert store.tables() == {"customers": 2}


def test_field_limit(store: OrgDataStore, tmp_path: Path) -> None:
    ok = "x" * 64 * 1024
    csv_path, jsonl_path = tmp_path / "c.csv", tmp_path / "c.jsonl"
    csv_path.write_text(f"id,notes\nC-1,{ok}\n")
    jsonl_path.write_text(f'{{"id": "C-1", "notes": "{ok}"}}\n')
    assert read_records(csv_path) and read_records(jsonl_path)  # exactly 64 KiB is fine
    csv_path.write_text(f"id,notes\nC-1,a\nC-2,{ok}é\n")  # é is 2 bytes of UTF-8
    _refused(store, csv_path, 3, "field 'notes' is 65538 bytes, over the 64 KiB limit")
    csv_path.write_text(f'id,notes\nC-1,"{"y" * 200_000}"\n')  # past csv's own limit too
    _refused(store, csv_path, 2, "a field is over the 64 KiB limit")
    jsonl_path.write_text(f'{{"id": "C-1"}}\n{{"id": "C-2", "notes": "{ok}x"}}\n')
    _refused(store, jsonl_path, 2, "field 'notes' is 65537 bytes, over the 64 KiB limit")
    jsonl_path.write_text(f'{{"id": "C-1", "tags": {["t" * 100] * 700}}}\n'.replace("'", '"'))
    _refused(store, jsonl_path, 1, "field 'tags' is ")


def test_record_limit(store: OrgDataStore, tmp_path: Path) -> None:
    cell = "z" * 60_000
    csv_path, jsonl_path = tmp_path / "c.csv", tmp_path / "c.jsonl"
    columns = [f"f{n}" for n in range(18)]
    csv_path.write_text(f"id,{','.join(columns)}\nC-1{f',{cell}' * 18}\n")  # 18 x 60,000 bytes
    _refused(store, csv_path, 2, "record is 1080003 bytes, over the 1 MiB limit")
    fields = ", ".join(f'"{name}": "{cell}"' for name in columns)
    jsonl_path.write_text(f'{{"id": "C-1"}}\n\n{{"id": "C-2", {fields}}}\n')
    _refused(store, jsonl_path, 3, "record is ")
    assert "over the 1 MiB limit" in _message(jsonl_path)


def _message(path: Path) -> str:
    with pytest.raises(OrgDataFileError) as info:
        read_records(path)
    return str(info.value)


def test_nesting_limit(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "C-1", "a": ' + "[" * 31 + "]" * 31 + "}\n")  # 32 levels in all
    assert read_records(path)[0]["a"] == [
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]
    ]
    path.write_text('{"id": "C-1", "a": ' + "[" * 32 + "]" * 32 + "}\n")
    _refused(store, path, 1, "JSON nested deeper than 32 levels")
    # Brackets inside strings do not count; escaped quotes do not end a string.
    path.write_text('{"id": "C-1", "a": "' + '\\"[{' * 100 + '"}\n')
    assert len(read_records(path)) == 1
    # 100,000 levels: the recursive parser would raise RecursionError; refused before it.
    path.write_text('{"id": "C-1"}\n{"id": "C-2", "a": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    _refused(store, path, 2, "JSON nested deeper than 32 levels")
    path.write_text('{"id": "C-1", "a": ' + '{"b": ' * 100_000)  # unterminated too
    _refused(store, path, 1, "JSON nested deeper than 32 levels")


def test_integer_digit_limit(store: OrgDataStore, tmp_path: Path) -> None:
    huge = "9" * 5000
    jsonl_path, csv_path = tmp_path / "c.jsonl", tmp_path / "c.csv"
    jsonl_path.write_text(f'{{"id": "C-1"}}\n{{"id": "C-2", "balance": {huge}}}\n')
    _refused(store, jsonl_path, 2, "integer of 5000 digits, over the 100-digit limit")
    jsonl_path.write_text(f'{{"id": -{huge}}}\n')  # the key itself, negative
    _refused(store, jsonl_path, 1, "integer of 5000 digits")
    csv_path.write_text(f"id,balance\nC-1,1\nC-2,{huge}\n")
    _refused(store, csv_path, 3, "integer of 5000 digits, over the 100-digit limit")
    csv_path.write_text(f"id,balance\nC-1,-{'1' * 101}\n")
    _refused(store, csv_path, 2, "integer of 101 digits")
    hundred = "1" * 100
    jsonl_path.write_text(f'{{"id": "C-1", "n": -{hundred}}}\n')
    csv_path.write_text(f"id,n,code\nC-1,{hundred},A{huge[:200]}\n")  # not only digits: text
    assert read_records(jsonl_path)[0]["n"] == -int(hundred)
    assert read_records(csv_path)[0]["n"] == hundred


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"id": "C-1", "x": NaN}', "NaN is not a JSON number"),
        ('{"id": "C-1", "x": -Infinity}', "-Infinity is not a JSON number"),
        ('{"id": "C-1", "x": 1e999}', "number 1e999 is out of range"),
        ('{"id": "C-1", "id": "C-2"}', "the object names field 'id' twice"),
        ('{"id": 1.5}', "field 'id' must be a string or integer, got float"),
        ('{"id": true}', "field 'id' must be a string or integer, got bool"),
    ],
)
def test_jsonl_values_that_are_not_data(
    store: OrgDataStore, tmp_path: Path, line: str, reason: str
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(line + "\n")
    _refused(store, path, 1, reason)


def test_csv_header_names_a_column_twice(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,name,name\nC-1,a,b\n")
    _refused(store, path, 1, "the header names column 'name' twice")


def test_not_utf8_names_the_line(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,name\nC-1,Ada\nC-2,B\xe9a\n")
    _refused(store, path, 3, "not UTF-8: byte 0xe9")


def _load_in_thread(store: OrgDataStore, path: Path) -> BaseException | None:
    """Load `path` in a daemon thread; fails the test if it is still blocked after 5 s."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            load_file(store, "customers", path)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), f"loading {path} blocked"
    return outcome[0]


def test_only_regular_files(store: OrgDataStore, tmp_path: Path) -> None:
    fifo = tmp_path / "c.jsonl"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    error = _load_in_thread(store, fifo)
    assert isinstance(error, OrgDataFileError)
    assert str(error) == f"{fifo}: cannot read a FIFO, only a regular file"
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    _refused(store, folder, None, "cannot read a directory, only a regular file")
    device = tmp_path / "null.csv"
    device.symlink_to("/dev/null")
    _refused(store, device, None, "cannot read a character device, only a regular file")
    real = tmp_path / "real.csv"
    real.write_text("id\nC-1\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)  # a link to a regular file is that file
    assert load_file(store, "customers", link) == 1


def test_a_fifo_swapped_in_after_the_check_is_not_waited_on(
    store: OrgDataStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    regular = tmp_path / "regular.csv"
    regular.write_text("id\n")
    fifo = tmp_path / "c.csv"
    os.mkfifo(fifo)
    real_stat = os.stat

    def raced_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        # The check sees a regular file; by the time it is opened, a FIFO is there.
        return real_stat(regular if Path(path) == fifo else path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", raced_stat)  # the loader calls os.stat
    error = _load_in_thread(store, fifo)
    assert isinstance(error, OrgDataFileError)
    assert error.reason == "cannot read a FIFO, only a regular file"


def test_nothing_is_written_when_a_late_line_is_bad(store: OrgDataStore, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "C-1", "v": 1}\n')
    load_file(store, "customers", path)
    before = store.get("customers", "C-1")
    lines = [f'{{"id": "C-{n}", "v": 2}}' for n in range(1, 1000)]
    path.write_text("\n".join([*lines, '{"id": "C-1000", "v": ' + "1" * 5000 + "}"]) + "\n")
    _refused(store, path, 1000, "integer of 5000 digits")
    assert store.get("customers", "C-1") == before and store.tables() == {"customers": 1}


def test_cli_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No broker: a bad file is refused before anything is published (or connected to).
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "C-1"}\n{"id": "C-2", "balance": ' + "9" * 5000 + "}\n")
    code = main(["orgdata", "load", "customers", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"llmflow: error: {path}:2: integer of 5000 digits, over the 100-digit limit\n"

    path.write_text('{"id": "C-1", "n": 1}\n{"id": "C-1", "n": 2}\n')
    assert main(["orgdata", "load", "customers", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"llmflow: error: {path}:2: duplicate id 'C-1', first on line 1 (--last-wins keeps "
        "the last)\n"
    )

    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert main(["orgdata", "load", "customers", str(fifo)]) == 2
    assert capsys.readouterr().err == (
        f"llmflow: error: {fifo}: cannot read a FIFO, only a regular file\n"
    )
    assert main(["orgdata", "load", "--samples", "customers"]) == 2
    assert "give TABLE and FILE, or --samples" in capsys.readouterr().err
