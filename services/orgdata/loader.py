"""Read org data files (.csv, .jsonl) and the bundled samples, strictly, for publishing.

CSV values stay strings, exactly as written (an empty cell is ""): guessing numbers
would turn ids like "0042" into 42 and make versions depend on the guess. Use JSONL
when rows need numbers, booleans or nesting.

Loading is strict and all or nothing: the whole file is read and checked before anything
is written, and the first problem stops the load with an `OrgDataFileError` whose message
is `<file>:<line>: <reason>` (the line where the record starts). Refused:

- anything but a regular file (a FIFO, device or directory is never opened for reading);
- text that is not UTF-8, malformed CSV quoting (an unterminated quote included: it would
  swallow every following row), invalid JSON, NaN/Infinity or a float out of range, a
  JSON object naming one field twice;
- a field over 64 KiB (a CSV cell, or a JSONL top-level field: a string's UTF-8 bytes,
  any other value's compact JSON), a record over 1 MiB, JSON nested deeper than 32
  levels, an integer over 100 digits (in CSV: a cell of digits only, with an optional
  sign, since such a cell is an integer to anyone who reads it);
- a record without its key, or a key that is not a string or an integer;
- two records with the same key, unless `last_wins` (`--last-wins`): the last one is kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from llmflow.services.orgdata.store import OrgDataError

_SUFFIXES = (".csv", ".jsonl")

MAX_FIELD_BYTES = 64 * 1024
MAX_RECORD_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_INT_DIGITS = 100

_CSV_INTEGER = re.compile(r"[+-]?[0-9]+")
# One JSON token that matters for nesting: a string (skipped whole; an unterminated one
# runs to the end of the line, which keeps the scan linear) or a bracket.
_JSON_NESTING = re.compile(r'"(?:[^"\\]+|\\.)*"?|[\[\]{}]', re.DOTALL)


class OrgDataFileError(OrgDataError):
    """A file cannot be loaded; `line` is where the offending record starts (None: the
    file as a whole). The message is `<file>:<line>: <reason>`, one line."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}")


class _Refused(Exception):
    """Raised by the JSON parser hooks; becomes an OrgDataFileError naming the line."""


def read_records(
    path: Path | str, key_field: str = "id", *, last_wins: bool = False
) -> list[dict[str, Any]]:
    """Every record of a .csv or .jsonl file, checked; OrgDataFileError on the first problem."""
    path = Path(path)
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise OrgDataFileError(
            source, None, f"unsupported file type {suffix!r} (use .csv or .jsonl)"
        )
    text = _decode(_read_regular_file(path), source)
    rows = _csv_rows(text, source, key_field) if suffix == ".csv" else _jsonl_rows(text, source)
    return _unique(rows, key_field, source, last_wins)


def sample_records() -> dict[str, list[dict[str, Any]]]:
    """The records of each `samples/<table>.jsonl` shipped with this package, by table."""
    samples = resources.files("llmflow.services.orgdata") / "samples"
    tables: dict[str, list[dict[str, Any]]] = {}
    for entry in sorted(samples.iterdir(), key=lambda e: e.name):
        if entry.is_file() and entry.name.endswith(".jsonl"):
            source = f"samples/{entry.name}"
            rows = _jsonl_rows(entry.read_text(encoding="utf-8"), source)
            tables[entry.name.removesuffix(".jsonl")] = _unique(rows, "id", source)
    return tables


# -- reading ------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _read_regular_file(path: Path) -> bytes:
    """The bytes of `path`, refusing anything but a regular file without blocking on it."""
    source = str(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise OrgDataFileError(source, None, f"cannot read: {exc.strerror}") from exc
    if not stat.S_ISREG(mode):
        raise OrgDataFileError(source, None, f"cannot read {_kind(mode)}, only a regular file")
    try:
        # O_NONBLOCK: should the path become a FIFO after the check, opening it does not
        # wait for a writer, and the fstat below refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise OrgDataFileError(source, None, f"cannot read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise OrgDataFileError(source, None, f"cannot read {_kind(mode)}, only a regular file")
        try:
            return file.read()
        except OSError as exc:
            raise OrgDataFileError(source, None, f"cannot read: {exc.strerror}") from exc


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")  # -sig: spreadsheet exports add a BOM
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise OrgDataFileError(
            source, line, f"not UTF-8: byte 0x{data[exc.start]:02x} cannot be decoded"
        ) from exc


# -- CSV ----------------------------------------------------------------------------------


def _csv_rows(text: str, source: str, key_field: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line where the record starts, record) for every row after the header."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise OrgDataFileError(source, start, _csv_reason(exc, reader.line_num, start)) from exc
        if not cells:
            continue  # a blank line
        _check_csv_cells(cells, header, source, start)
        if header is None:
            _check_header(cells, key_field, source, start)
            header = cells
            continue
        if len(cells) > len(header):
            raise OrgDataFileError(
                source, start, f"more cells than the header ({len(cells)} > {len(header)})"
            )
        yield start, dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))


def _csv_reason(exc: csv.Error, line_now: int, start: int) -> str:
    message = str(exc)
    if "unexpected end of data" in message:
        return "unterminated quoted field: a quote opened in this record is never closed"
    if "field larger than field limit" in message:
        return f"a field is over the {_size(MAX_FIELD_BYTES)} limit"
    where = f" (on line {line_now})" if line_now > start else ""
    return f"malformed CSV: {message}{where}"


def _check_header(cells: list[str], key_field: str, source: str, line: int) -> None:
    if key_field not in cells:
        raise OrgDataFileError(source, line, f"the header has no {key_field!r} column")
    seen: set[str] = set()
    for name in cells:
        if name in seen:
            raise OrgDataFileError(source, line, f"the header names column {name!r} twice")
        seen.add(name)


def _check_csv_cells(cells: list[str], header: list[str] | None, source: str, line: int) -> None:
    total = 0
    for n, cell in enumerate(cells):
        size = _utf8_size(cell)
        if size > MAX_FIELD_BYTES:
            name = repr(header[n]) if header is not None and n < len(header) else f"#{n + 1}"
            raise OrgDataFileError(
                source,
                line,
                f"field {name} is {size} bytes, over the {_size(MAX_FIELD_BYTES)} limit",
            )
        total += size
        if len(cell) > MAX_INT_DIGITS and _CSV_INTEGER.fullmatch(cell):
            _refuse_digits(len(cell.lstrip("+-")), source, line)
    if total > MAX_RECORD_BYTES:
        raise OrgDataFileError(
            source, line, f"record is {total} bytes, over the {_size(MAX_RECORD_BYTES)} limit"
        )


# -- JSONL --------------------------------------------------------------------------------


def _jsonl_rows(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # split("\n"), not splitlines(): U+2028 may appear unescaped inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        size = _utf8_size(line)
        if size > MAX_RECORD_BYTES:
            raise OrgDataFileError(
                source, number, f"record is {size} bytes, over the {_size(MAX_RECORD_BYTES)} limit"
            )
        if _nesting_exceeds(line, MAX_DEPTH):
            raise OrgDataFileError(source, number, f"JSON nested deeper than {MAX_DEPTH} levels")
        try:
            row = json.loads(
                line,
                parse_int=_parse_int,
                parse_float=_parse_float,
                parse_constant=_parse_constant,
                object_pairs_hook=_object,
            )
        except _Refused as exc:
            raise OrgDataFileError(source, number, str(exc)) from exc
        except json.JSONDecodeError as exc:
            raise OrgDataFileError(
                source, number, f"invalid JSON: {exc.msg} (column {exc.colno})"
            ) from exc
        except RecursionError as exc:  # the scan above makes this unreachable; kept as a net
            raise OrgDataFileError(source, number, "JSON nested too deeply") from exc
        except ValueError as exc:
            raise OrgDataFileError(source, number, f"invalid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise OrgDataFileError(
                source, number, f"expected a JSON object, got {type(row).__name__}"
            )
        for name, value in row.items():
            size = _utf8_size(value) if isinstance(value, str) else _utf8_size(_compact(value))
            if size > MAX_FIELD_BYTES:
                raise OrgDataFileError(
                    source,
                    number,
                    f"field {name!r} is {size} bytes, over the {_size(MAX_FIELD_BYTES)} limit",
                )
        yield number, row


def _nesting_exceeds(line: str, limit: int) -> bool:
    """True when the arrays and objects of `line` nest deeper than `limit`; linear time,
    so a 100,000-deep line is refused before the recursive parser sees it."""
    depth = 0
    for match in _JSON_NESTING.finditer(line):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth = max(0, depth - 1)
    return False


def _parse_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"integer of {digits} digits, over the {MAX_INT_DIGITS}-digit limit")
    return int(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        shown = literal if len(literal) <= 24 else f"{literal[:20]}..."
        raise _Refused(f"number {shown} is out of range")
    return value


def _parse_constant(literal: str) -> Any:
    raise _Refused(f"{literal} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise _Refused(f"the object names field {name!r} twice")
        obj[name] = value
    return obj


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- records ------------------------------------------------------------------------------


def _unique(
    rows: Iterable[tuple[int, dict[str, Any]]], key_field: str, source: str, last_wins: bool = False
) -> list[dict[str, Any]]:
    """The records, one per key; a repeated key is an error unless `last_wins`."""
    kept: dict[str, tuple[int, dict[str, Any]]] = {}
    for line, row in rows:
        _require_key(row, key_field, source, line)
        key = str(row[key_field])
        first = kept.get(key)
        if first is not None and not last_wins:
            raise OrgDataFileError(
                source,
                line,
                f"duplicate {key_field} {key!r}, first on line {first[0]} "
                "(--last-wins keeps the last)",
            )
        kept[key] = (line, row)
    return [row for _, row in kept.values()]


def _require_key(row: Mapping[str, Any], key_field: str, source: str, line: int) -> None:
    key = row.get(key_field)
    if key in (None, ""):
        raise OrgDataFileError(source, line, f"no {key_field!r} field")
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise OrgDataFileError(
            source,
            line,
            f"field {key_field!r} must be a string or integer, got {type(key).__name__}",
        )


def _refuse_digits(digits: int, source: str, line: int) -> None:
    raise OrgDataFileError(
        source, line, f"integer of {digits} digits, over the {MAX_INT_DIGITS}-digit limit"
    )


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))  # JSON may hold lone surrogates


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
