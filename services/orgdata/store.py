"""Organisational reference data (customers, products, policies) in one SQLite file.

Reads are one cached, prepared primary-key lookup and are made from the asyncio event
loop thread directly. File databases get a separate write connection: with WAL the
reader keeps seeing the last committed snapshot while a bulk load runs, so a reload
never stalls the event loop.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from llmflow.errors import LlmflowError

_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    version TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (tbl, key)
)
"""
_GET = "SELECT version, updated_at, data FROM records WHERE tbl = ? AND key = ?"
# Identical rows keep their updated_at: the WHERE skips the update when the version matches.
_UPSERT = """
INSERT INTO records (tbl, key, version, updated_at, data) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (tbl, key) DO UPDATE SET
    version = excluded.version, updated_at = excluded.updated_at, data = excluded.data
WHERE records.version != excluded.version
"""
_COUNTS = "SELECT tbl, COUNT(*) FROM records GROUP BY tbl ORDER BY tbl"


class OrgDataError(LlmflowError):
    """Org data could not be stored or loaded; the message names the table, row or line."""


@dataclass(frozen=True, slots=True)
class OrgRecord:
    """One row of reference data plus what lineage needs to cite it."""

    table: str
    key: str
    version: str
    updated_at: str
    data: dict[str, Any]

    def lineage(self) -> dict[str, str]:
        return {"table": self.table, "key": self.key, "version": self.version}


def canonical_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def record_version(data: Mapping[str, Any]) -> str:
    """First 16 hex chars of the SHA-256 of the canonical JSON: equal data, equal version."""
    return _digest(canonical_json(data))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def validate_table(table: str) -> str:
    if not _TABLE_NAME.fullmatch(table):
        raise OrgDataError(f"table name {table!r} must match [a-z][a-z0-9_]*")
    return table


class OrgDataStore:
    """Key-value store of JSON rows grouped by table; safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        # ":memory:" (and "", a temporary file) is private to one connection.
        private = self.path in ("", ":memory:")
        try:
            self._writer = self._connect()
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=NORMAL")  # crash-consistent under WAL
            self._writer.execute(_SCHEMA)
            self._reader = self._writer if private else self._connect()
        except sqlite3.Error as exc:
            raise OrgDataError(f"cannot open org data store {self.path!r}: {exc}") from exc
        self._write_lock = threading.Lock()
        self._read_lock = self._write_lock if private else threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        # Autocommit (isolation_level=None): every read sees the latest committed data;
        # upsert opens its own transaction.
        return sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)

    def upsert(self, table: str, rows: Iterable[Mapping[str, Any]], key_field: str = "id") -> int:
        """Insert or replace rows keyed by `key_field`; returns how many rows were given.

        All rows are validated before anything is written, so a bad row leaves the
        table as it was. A row whose data is unchanged keeps its version and updated_at.
        """
        validate_table(table)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        params: list[tuple[str, str, str, str, str]] = []
        for number, row in enumerate(rows, start=1):
            key = row.get(key_field)
            if key is None or key == "":
                raise OrgDataError(f"table {table!r}: row {number} has no {key_field!r} field")
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise OrgDataError(
                    f"table {table!r}: row {number} field {key_field!r} must be a string "
                    f"or integer, got {type(key).__name__}"
                )
            try:
                text = canonical_json(dict(row))
            except (TypeError, ValueError) as exc:
                raise OrgDataError(
                    f"table {table!r}: row {number} is not JSON data: {exc}"
                ) from exc
            params.append((table, str(key), _digest(text), now, text))
        with self._write_lock:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                self._writer.executemany(_UPSERT, params)
                self._writer.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise OrgDataError(f"table {table!r}: cannot store rows: {exc}") from exc
        return len(params)

    def get(self, table: str, key: str) -> OrgRecord | None:
        """The row `key` of `table`, or None; `data` is a fresh dict the caller may change."""
        validate_table(table)
        with self._read_lock:
            found = self._reader.execute(_GET, (table, key)).fetchone()
        if found is None:
            return None
        version, updated_at, text = found
        return OrgRecord(table, key, version, updated_at, json.loads(text))

    def tables(self) -> dict[str, int]:
        """Row count per table."""
        with self._read_lock:
            return dict(self._reader.execute(_COUNTS).fetchall())

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        if self._reader is not self._writer:
            with self._read_lock:
                self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
