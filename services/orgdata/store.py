"""A worker's own copy of the org data: records, and a collection's passages (indexed in
memory for keyword and vector search, `index.py`), with the topic offsets it has applied.

One writer (the materializer's thread) applies changes a batch at a time, each batch and
its offsets in one transaction, so a worker that stops at any moment resumes from the
last batch it applied. Readers get their own connection per thread: under WAL they see the
last committed batch and never wait for the writer. Record lookups run on the event loop
(one prepared primary-key read); searches run in a thread (`search`).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import pydantic_core

from llmflow.errors import LlmflowError
from llmflow.services.orgdata.changes import PLAIN_EXCLUDES, Change, Unchecked, Upsert
from llmflow.services.orgdata.documents import plain_passages
from llmflow.services.orgdata.index import Entry, PassageIndex
from llmflow.topologies.collections import Collection

log = logging.getLogger(__name__)

_TABLE_NAME = re.compile(r"[a-z][a-z0-9_]*")
MMAP_BYTES = 1 << 30
CHECKPOINT_PAGES = 8192
"""WAL pages (128 MiB) before a checkpoint copies them into the file: a page changed by many
batches in between is copied once. The default (1,000) halved the rate of a catch-up."""
FORMAT = 2
"""The file's layout (`PRAGMA user_version`); a copy in another layout is read again."""
LOAD_BATCH = 8192
"""Passages indexed at a time when a stored copy is opened."""

# Records in a rowid table, found by a unique index: a batch appends its rows at the end of
# the file, where a table clustered on the key moved 1 KiB rows around at every insert
# (twice the time per record).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    tbl TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL,
    partition INTEGER NOT NULL, offset INTEGER NOT NULL, data TEXT NOT NULL,
    UNIQUE (tbl, key)
);
CREATE TABLE IF NOT EXISTS positions (
    tbl TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (tbl, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL,
    text TEXT NOT NULL, tenant TEXT, model TEXT, vector BLOB
);
CREATE INDEX IF NOT EXISTS passages_of_record ON passages (tbl, key);
CREATE TABLE IF NOT EXISTS synced (tbl TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
"""
_STORE_TABLES = ("records", "positions", "passages", "synced")
_GET = "SELECT version, partition, offset, data FROM records WHERE tbl = ? AND key = ?"
_UPSERT = "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?)"


def _checks_json() -> bool:
    if (3, 42) <= sqlite3.sqlite_version_info < (3, 45):
        return False  # json_valid() took JSON5 too, which Python cannot read back
    probe = sqlite3.connect(":memory:")
    try:  # a build may leave the JSON functions out
        return bool(probe.execute("SELECT json_valid('{}')").fetchone()[0])
    except sqlite3.Error:
        return False
    finally:
        probe.close()


CHECKS_JSON = _checks_json()
"""Whether this SQLite has a json_valid() that accepts RFC 8259 JSON only: the materializer
takes `Unchecked` records only then."""
# A batch's `Unchecked` records go in as one statement: Python's executemany takes the GIL
# back after every row, and waited for the thread decoding the next batch each time, so
# the two never ran at once. The statement reads the records from two parameters: their
# keys and values back to back in a blob, and an index with a fixed-width slot per record
# (`_unchecked_params`). A value is stored only if it is valid JSON (it starts with `{`: an
# object) without a top-level field of `PLAIN_EXCLUDES` (SQLite parses a value once for all
# the JSON functions of a statement); otherwise NULL breaks the NOT NULL constraint and
# the batch is decoded in full.
_SLOT = 16 + 20 + 10 + 10
"""version, offset, key length, value length: each record's place in the blob is counted
by the recursion, which spares Python the formatting of two more numbers per record"""
_IS_PLAIN = " AND ".join(f"json_type(data, '$.{field}') IS NULL" for field in PLAIN_EXCLUDES)
_UPSERT_UNCHECKED = f"""
WITH RECURSIVE slot(at, key_at, key_len, value_len) AS (
    SELECT 1, 1, CAST(substr(?4, 37, 10) AS INTEGER), CAST(substr(?4, 47, 10) AS INTEGER)
    UNION ALL
    SELECT at + {_SLOT}, key_at + key_len + value_len,
        CAST(substr(?4, at + {_SLOT + 36}, 10) AS INTEGER),
        CAST(substr(?4, at + {_SLOT + 46}, 10) AS INTEGER)
    FROM slot WHERE at + {_SLOT} <= length(?4)
)
INSERT OR REPLACE INTO records
SELECT ?1, CAST(substr(?3, key_at, key_len) AS TEXT), CAST(substr(?4, at, 16) AS TEXT), ?2,
    CAST(substr(?4, at + 16, 20) AS INTEGER),
    CASE WHEN NOT json_valid(data) THEN NULL WHEN {_IS_PLAIN} THEN data END
FROM (
    SELECT *, CAST(substr(?3, key_at + key_len, value_len) AS TEXT) AS data FROM slot
)
"""

_DELETE = "DELETE FROM records WHERE tbl = ? AND key = ?"
_POSITION = "INSERT OR REPLACE INTO positions VALUES (?, ?, ?)"
_PASSAGES = (
    "SELECT p.id, p.tbl, p.key, p.n, p.text, r.version, r.offset, r.data FROM passages p "
    "JOIN records r ON r.tbl = p.tbl AND r.key = p.key"
)


def _unchecked_params(rows: Iterable[tuple[str, int, Unchecked]]) -> tuple[bytes, bytes]:
    """The blob (keys and values back to back) and the index `_UPSERT_UNCHECKED` reads."""
    parts: list[bytes] = []
    slots: list[str] = []
    for key, offset, change in rows:
        raw_key = key.encode()
        # %-formatting: a third of the time an f-string with format specs takes
        slot = "%s%020d%010d%010d" % (change.version, offset, len(raw_key), len(change.value))  # noqa: UP031
        slots.append(slot)
        parts.append(raw_key)
        parts.append(change.value)
    return b"".join(parts), "".join(slots).encode()


class OrgDataError(LlmflowError):
    """Org data could not be stored or read; the message names the table."""


class NotPlain(OrgDataError):
    """An `Unchecked` value is not valid JSON, or not a plain record (see `PLAIN_EXCLUDES`);
    nothing of its batch was applied."""


@dataclass(frozen=True, slots=True)
class OrgRecord:
    """One record of reference data plus what lineage needs to cite it."""

    table: str
    key: str
    version: str
    """Content hash of the record's value."""
    partition: int
    offset: int
    """Where in the table's topic this version was published."""
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredPassage:
    id: int
    table: str
    key: str
    n: int
    text: str
    version: str
    """Of the record the passage belongs to."""
    offset: int
    data: str
    """The record's data as JSON."""


def stored_data(text: str) -> Any:
    """A stored record's data. pydantic-core reads 1 KB of JSON in a third of the time
    json.loads takes (a lookup's largest part). Every value was stored after its parser or
    SQLite's json_valid() took it; one only json.loads reads (an escaped lone surrogate)
    could come from a copy an older version wrote."""
    try:
        return pydantic_core.from_json(text)
    except ValueError:
        return json.loads(text)


def validate_table(table: str) -> str:
    if not _TABLE_NAME.fullmatch(table):
        raise OrgDataError(f"table name {table!r} must match [a-z][a-z0-9_]*")
    return table


def filter_text(value: Any) -> str | None:
    """How a record field is compared with a filter: strings as they are, else JSON."""
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Batch:
    """One partition's changes, each key's last one only, in the parameters of the writes
    that apply them. Made by the thread that reads the topics, so the one that writes runs
    little Python: it would wait for the GIL."""

    table: str
    partition: int
    latest: dict[str, tuple[int, Change]]
    """key -> (offset, change)"""
    upserts: list[tuple[str, str, str, int, int, str]]
    unchecked: tuple[bytes, bytes] | None
    """The blob and index `_UPSERT_UNCHECKED` reads, if there is any `Unchecked` change."""
    deletes: list[tuple[str, str]]

    @classmethod
    def of(cls, table: str, partition: int, changes: Iterable[tuple[int, Change]]) -> Batch:
        latest: dict[str, tuple[int, Change]] = {}
        for offset, change in changes:
            latest[change.key] = (offset, change)  # a key's last change in the batch wins
        upserts = []
        unchecked = []
        deletes = []
        for key, (offset, c) in latest.items():
            if isinstance(c, Unchecked):
                unchecked.append((key, offset, c))
            elif isinstance(c, Upsert):
                upserts.append((table, key, c.version, partition, offset, c.text))
            else:
                deletes.append((table, key))
        params = _unchecked_params(unchecked) if unchecked else None
        return cls(table, partition, latest, upserts, params, deletes)


class OrgDataStore:
    """Records by table and key, passages of the `collections`, and applied offsets."""

    def __init__(
        self, path: Path | str, collections: Mapping[str, Collection] | None = None
    ) -> None:
        self.path = str(path)
        self.collections = dict(collections or {})
        # ":memory:" is private to one connection: then every thread shares it, in turn.
        self._private = self.path in ("", ":memory:")
        self._local = threading.local()
        self._lock = threading.RLock()
        try:
            self._writer = self._connect()
            self._writer.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            self._ensure_format()
        except sqlite3.Error as exc:
            raise OrgDataError(f"cannot open org data store {self.path!r}: {exc}") from exc
        self._readers: list[sqlite3.Connection] = []
        self.indexes: dict[str, PassageIndex] = {}
        for collection in self.collections.values():
            self.indexes[collection.name] = self._load_index(collection)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # 16 KiB pages (for a new file): a record of about 1 KiB no longer spills into an
        # overflow page of its own, which made the file 4x the data and lookups 3x slower.
        connection.execute("PRAGMA page_size=16384")
        if not self._private:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # crash-consistent under WAL
            connection.execute(f"PRAGMA mmap_size={MMAP_BYTES}")  # reads without a syscall
        return connection

    def _ensure_format(self) -> None:
        """The schema, in this version's layout. The file is a copy of the topics: one in
        another layout is emptied, and the materializer reads the topics again."""
        db = self._writer
        found = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL"
        ).fetchall()
        if found == FORMAT or not tables:
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {FORMAT}; COMMIT;")
            return
        log.warning(
            "org data store %s is in layout %d, this version uses %d: it is read again "
            "from the topics",
            self.path,
            found,
            FORMAT,
        )
        # A virtual table drops its shadow tables with it; dropping those first would fail.
        virtual = [name for name, sql in tables if sql.upper().startswith("CREATE VIRTUAL")]
        drops = "".join(f'DROP TABLE IF EXISTS "{name}"; ' for name in [*virtual, *_STORE_TABLES])
        db.executescript(f"BEGIN; {drops}{_SCHEMA} PRAGMA user_version = {FORMAT}; COMMIT;")

    def _reader(self) -> sqlite3.Connection:
        if self._private:
            return self._writer
        reader: sqlite3.Connection | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = self._connect()
            with self._lock:
                self._readers.append(reader)
        return reader

    # -- reads --------------------------------------------------------------------------

    def get(self, table: str, key: str) -> OrgRecord | None:
        """The record `key` of `table`, or None; `data` is a fresh dict the caller may change."""
        if self._private:
            with self._lock:
                found = self._writer.execute(_GET, (table, key)).fetchone()
        else:
            found = self._reader().execute(_GET, (table, key)).fetchone()
        if found is None:
            return None
        version, partition, offset, text = found
        return OrgRecord(table, key, version, partition, offset, stored_data(text))

    def tables(self) -> dict[str, int]:
        """Record count per table."""
        return dict(self._read("SELECT tbl, COUNT(*) FROM records GROUP BY tbl ORDER BY tbl"))

    def records(self, table: str) -> dict[str, str]:
        """Every record of `table`: key -> its data as JSON."""
        return dict(self._read("SELECT key, data FROM records WHERE tbl = ?", (table,)))

    def passages_of(self, table: str, key: str) -> list[StoredPassage]:
        rows = self._read(f"{_PASSAGES} WHERE p.tbl = ? AND p.key = ? ORDER BY p.n", (table, key))
        return [StoredPassage(*row) for row in rows]

    def synced_at(self, table: str) -> float | None:
        """When (Unix time) the copy of `table` last had every record its topic held."""
        found = self._read("SELECT at FROM synced WHERE tbl = ?", (table,))
        return float(found[0][0]) if found else None

    def mark_synced(self, tables: Iterable[str], at: float) -> None:
        with self._lock:
            self._writer.executemany(
                "INSERT OR REPLACE INTO synced VALUES (?, ?)", [(table, at) for table in tables]
            )

    def positions(self, table: str) -> dict[int, int]:
        """Next offset to apply, per partition of the table's topic."""
        rows = self._read("SELECT partition, next_offset FROM positions WHERE tbl = ?", (table,))
        return dict(rows)

    def passages(self, ids: Iterable[int]) -> dict[int, StoredPassage]:
        wanted = list(ids)
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self._read(f"{_PASSAGES} WHERE p.id IN ({marks})", wanted)
        return {row[0]: StoredPassage(*row) for row in rows}

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        if self._private:
            with self._lock:
                return self._writer.execute(sql, tuple(params)).fetchall()
        return self._reader().execute(sql, tuple(params)).fetchall()

    # -- writes (one thread) ------------------------------------------------------------

    def apply(
        self, table: str, partition: int, changes: list[tuple[int, Change]], next_offset: int
    ) -> None:
        """Apply `changes` ((offset, change), in offset order) of one partition and record
        `next_offset` as applied, all in one transaction."""
        self.write(Batch.of(table, partition, changes), next_offset)

    def write(self, batch: Batch, next_offset: int) -> None:
        """`apply`, for a batch made beforehand (in another thread)."""
        table, partition = batch.table, batch.partition
        collection = self.collections.get(table)
        removed: list[int] = []
        added: list[Entry] = []
        with self._lock:
            db = self._writer
            try:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_UPSERT, batch.upserts)
                try:
                    if batch.unchecked is not None:
                        db.execute(_UPSERT_UNCHECKED, (table, partition, *batch.unchecked))
                except sqlite3.IntegrityError as exc:
                    raise NotPlain(f"table {table!r}: a value is not a plain record") from exc
                db.executemany(_DELETE, batch.deletes)
                if collection is not None:
                    removed, added = self._replace_passages(db, collection, batch.latest)
                db.execute(_POSITION, (table, partition, next_offset))
                db.execute("COMMIT")
            except NotPlain:
                db.execute("ROLLBACK")
                raise
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise OrgDataError(f"table {table!r}: cannot apply changes: {exc}") from exc
        if collection is not None:
            index = self.indexes[table]
            index.remove(removed)
            index.add(added)

    def _replace_passages(
        self,
        db: sqlite3.Connection,
        collection: Collection,
        latest: Mapping[str, tuple[int, Change]],
    ) -> tuple[list[int], list[Entry]]:
        name = collection.name
        removed: list[int] = []
        added: list[Entry] = []
        for key, (_, change) in latest.items():
            old = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM passages WHERE tbl = ? AND key = ?", (name, key)
                )
            ]
            if old:
                marks = ",".join("?" * len(old))
                db.execute(f"DELETE FROM passages WHERE id IN ({marks})", old)
                removed += old
            if isinstance(change, Unchecked):
                raise OrgDataError(f"table {name!r}: a collection's records are decoded in full")
            if not isinstance(change, Upsert):
                continue
            passages = change.passages
            if passages is None:
                passages = plain_passages(change.data, collection)
            tenant = (
                filter_text(change.data.get(collection.tenant_field))
                if collection.tenant_field
                else None
            )
            filters = {field: filter_text(change.data.get(field)) for field in collection.filters}
            for passage in passages:
                vector = passage.vector.tobytes() if passage.vector is not None else None
                cursor = db.execute(
                    "INSERT INTO passages (tbl, key, n, text, tenant, model, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, key, passage.n, passage.text, tenant, passage.model, vector),
                )
                pid = int(cursor.lastrowid or 0)
                usable = passage.model == collection.embedding.model
                added.append(
                    Entry(pid, passage.text, passage.vector if usable else None, tenant, filters)
                )
        return removed, added

    def clear(self, table: str) -> None:
        """Forget the table and its applied offsets (its topic is then read from the start)."""
        with self._lock:
            db = self._writer
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM records WHERE tbl = ?", (table,))
            db.execute("DELETE FROM positions WHERE tbl = ?", (table,))
            db.execute("DELETE FROM synced WHERE tbl = ?", (table,))
            if table in self.collections:
                db.execute("DELETE FROM passages WHERE tbl = ?", (table,))
            db.execute("COMMIT")
        if table in self.collections:
            self.indexes[table] = PassageIndex(self.collections[table].embedding.dimensions)

    # -- indexes ------------------------------------------------------------------------

    def _load_index(self, collection: Collection) -> PassageIndex:
        index = PassageIndex(collection.embedding.dimensions)
        rows = self._writer.execute(
            "SELECT p.id, p.key, p.text, p.model, p.vector, p.tenant, r.data FROM passages p "
            "JOIN records r ON r.tbl = p.tbl AND r.key = p.key WHERE p.tbl = ? ORDER BY p.key",
            (collection.name,),
        )
        entries = []
        last_key, filters = None, {}
        for pid, key, text, model, blob, tenant, data in rows:
            if key != last_key:  # a record's passages come together: its data parsed once
                record = json.loads(data)
                filters = {field: filter_text(record.get(field)) for field in collection.filters}
                last_key = key
            usable = blob is not None and model == collection.embedding.model
            vector = np.frombuffer(blob, dtype=np.float32) if usable else None
            entries.append(Entry(pid, text, vector, tenant, filters))
            if len(entries) == LOAD_BATCH:  # not every passage's text in memory at once
                index.add(entries)
                entries = []
        index.add(entries)
        return index

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            for reader in self._readers:
                reader.close()
            self._writer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
