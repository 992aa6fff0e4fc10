"""Load org data files (.csv, .jsonl) and the bundled samples into an OrgDataStore.

CSV values stay strings, exactly as written (an empty cell is ""): guessing numbers
would turn ids like "0042" into 42 and make versions depend on the guess. Use JSONL
when rows need numbers, booleans or nesting.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from llmflow.services.orgdata.store import OrgDataError, OrgDataStore

_SUFFIXES = (".csv", ".jsonl")


def load_file(store: OrgDataStore, table: str, path: Path | str, key_field: str = "id") -> int:
    """Upsert every row of `path` into `table`; returns the row count. All or nothing."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise OrgDataError(f"{path}: unsupported file type {suffix!r} (use .csv or .jsonl)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet exports add a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise OrgDataError(f"cannot read {path}: {exc}") from exc
    parse = _csv_rows if suffix == ".csv" else _jsonl_rows
    return store.upsert(table, parse(text, str(path), key_field), key_field)


def load_samples(store: OrgDataStore) -> dict[str, int]:
    """Load each `samples/<table>.jsonl` shipped with this package; returns counts."""
    samples = resources.files("llmflow.services.orgdata") / "samples"
    counts: dict[str, int] = {}
    for entry in sorted(samples.iterdir(), key=lambda e: e.name):
        if entry.is_file() and entry.name.endswith(".jsonl"):
            table = entry.name.removesuffix(".jsonl")
            rows = _jsonl_rows(entry.read_text(encoding="utf-8"), f"samples/{entry.name}", "id")
            counts[table] = store.upsert(table, rows)
    return counts


def _csv_rows(text: str, source: str, key_field: str) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), restval="")
    if reader.fieldnames is not None and key_field not in reader.fieldnames:
        raise OrgDataError(f"{source}: the header has no {key_field!r} column")
    for row in reader:
        if None in row:  # DictReader files surplus cells under the key None
            raise OrgDataError(f"{source}, line {reader.line_num}: more cells than the header")
        _require_key(row, key_field, source, reader.line_num)
        yield row


def _jsonl_rows(text: str, source: str, key_field: str) -> Iterator[dict[str, Any]]:
    # split("\n"), not splitlines(): U+2028 may appear unescaped inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OrgDataError(
                f"{source}, line {number}: invalid JSON: {exc.msg} (column {exc.colno})"
            ) from exc
        if not isinstance(row, dict):
            raise OrgDataError(
                f"{source}, line {number}: expected a JSON object, got {type(row).__name__}"
            )
        _require_key(row, key_field, source, number)
        yield row


def _require_key(row: Mapping[str, Any], key_field: str, source: str, line: int) -> None:
    # Checked here as well as in upsert so the error names the line, not the row number.
    if row.get(key_field) in (None, ""):
        raise OrgDataError(f"{source}, line {line}: no {key_field!r} field")
