"""A collection's passages indexed in memory for keyword search (BM25 over postings) and
vector search (exact cosine over one matrix), with each passage's tenant and filter values.

One row per passage. Rows are appended; a removed passage's row is marked dead and the
rows are compacted once a quarter of them are dead. Keyword postings are kept sorted by
term (a CSR layout: every term's rows in one slice) plus the postings added since, per
term, merged into the sorted part once they are half its size.

Why not SQLite FTS5 (docs/keyword-search.md): an OR of a question's words matches a third
of 100,000 passages, and FTS5 takes 50-150 ms to score them; these arrays take about 1 ms.
Why not an approximate vector index (docs/vector-search.md): exact search over 100,000
passages takes about 10 ms, needs no build, and takes any filter as a mask.

One writer (the materializer's thread) adds and removes; searches run in other threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from llmflow.services.orgdata.terms import stem, words

K1 = 1.2
B = 0.75
"""BM25's parameters, as Lucene and SQLite FTS5 set them."""

Scope = tuple[str | None, bool] | None
"""(tenant, shared documents too), or None when the collection has no tenants."""

Ranked = list[tuple[int, float]]
"""(passage id, score), best first."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A passage as the index takes it."""

    id: int
    text: str
    vector: npt.NDArray[np.float32] | None
    """Unit length, of the collection's size; None when it has none (keyword search only)."""
    tenant: str | None
    fields: Mapping[str, str | None]
    """Filter field -> value."""


T = TypeVar("T", bound=np.generic)
_NO_ROWS: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
_NO_TFS: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)


Chunk = tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.float32]]
"""Postings sorted by term: (term ids, rows, term frequencies)."""
Postings = tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float32]]
"""Postings in CSR form: (where each term id's slice starts, rows, term frequencies)."""

BATCH = 2048
"""Passages tokenized and indexed together: one chunk of postings each."""
MAX_CHUNKS = 16
"""Chunks of recent postings are merged into one past this many (a search looks in each)."""
MIN_MERGE_POSTINGS = 65_536
"""Recent postings are merged into the sorted part once they are this many and half its size."""
MIN_DEAD_ROWS = 1024
"""Rows are compacted once this many and a quarter of them are dead."""


class PassageIndex:
    def __init__(self, dimensions: int, capacity: int = 1024) -> None:
        self.dimensions = dimensions
        self._lock = threading.Lock()
        self._top = 0  # rows in use, dead ones included
        self._row_of: dict[int, int] = {}  # live passage id -> row
        self._live_length = 0  # terms in the live passages
        self._ids = np.full(capacity, -1, dtype=np.int64)
        self._live = np.zeros(capacity, dtype=bool)
        self._has_vector = np.zeros(capacity, dtype=bool)
        self._lengths = np.zeros(capacity, dtype=np.float32)
        self._matrix = np.zeros((capacity, dimensions), dtype=np.float32)
        self._tenants = np.zeros(capacity, dtype=np.int32)  # codes; 0: none (shared)
        self._fields: dict[str, npt.NDArray[np.int32]] = {}
        self._codes: dict[str | None, int] = {None: 0}
        # Keyword postings. Only the writer adds to these dicts; a reader's `get` is atomic.
        self._term_ids: dict[str, int] = {}  # stemmed term -> id
        self._word_ids: dict[str, int] = {}  # word as written -> its term's id
        self._starts = np.zeros(1, dtype=np.int64)  # term id -> its slice of the sorted part
        self._rows: npt.NDArray[np.int32] = _NO_ROWS
        self._tfs: npt.NDArray[np.float32] = _NO_TFS
        self._chunks: list[Chunk] = []  # added since the last merge
        self._recent_count = 0

    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def vectors(self) -> int:
        """Live passages with a vector."""
        with self._lock:
            return int(np.count_nonzero(self._has_vector[: self._top]))

    # -- writes (one thread) ------------------------------------------------------------

    def add(self, entries: Sequence[Entry]) -> None:
        """Index `entries`; an id already indexed is replaced (the last one wins)."""
        for first in range(0, len(entries), BATCH):
            self._add(entries[first : first + BATCH])
        self._maybe_compact()

    def _add(self, entries: Sequence[Entry]) -> None:
        texts = [words(entry.text) for entry in entries]
        lengths = np.fromiter((len(found) for found in texts), dtype=np.int64, count=len(texts))
        chunk = self._postings_of(texts, lengths)
        count = len(entries)
        fields = sorted({field for entry in entries for field in entry.fields})
        with self._lock:
            start = self._top
            while start + count > len(self._ids):
                self._grow()
            end = start + count
            self._ids[start:end] = [entry.id for entry in entries]
            self._live[start:end] = True
            self._lengths[start:end] = lengths
            self._live_length += int(lengths.sum())
            usable = [
                n
                for n, entry in enumerate(entries)
                if entry.vector is not None and entry.vector.shape == (self.dimensions,)
            ]
            self._has_vector[start:end] = False
            if usable:
                self._has_vector[start + np.array(usable)] = True
                self._matrix[start + np.array(usable)] = np.stack(
                    [entries[n].vector for n in usable]  # type: ignore[misc]
                )
            self._tenants[start:end] = [self._code(entry.tenant) for entry in entries]
            for field in fields:
                column = self._fields.get(field)
                if column is None:
                    column = self._fields[field] = np.zeros(len(self._ids), dtype=np.int32)
                column[start:end] = [self._code(entry.fields.get(field)) for entry in entries]
            for row, entry in enumerate(entries, start):
                self._remove(entry.id)  # the version indexed before, if any
                self._row_of[entry.id] = row
            terms, rows, tfs = chunk
            self._chunks.append((terms, (rows + start).astype(np.int32), tfs))
            self._recent_count += len(terms)
            self._top = end
        if len(self._chunks) > MAX_CHUNKS:
            self._merge_chunks()

    def _postings_of(self, texts: list[list[str]], lengths: npt.NDArray[np.int64]) -> Chunk:
        """The postings of a batch of passages, their rows counted from 0."""
        known = self._word_ids
        new = list(set(chain.from_iterable(texts)).difference(known))
        for word, term in zip(new, stem(new), strict=True):
            known[word] = self._term_ids.setdefault(term, len(self._term_ids))
        ids = np.fromiter(
            map(known.__getitem__, chain.from_iterable(texts)),
            dtype=np.int64,
            count=int(lengths.sum()),
        )
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        # One (term, row) pair per occurrence: unique pairs are the postings, sorted by term.
        pairs, tfs = np.unique((ids << 32) | rows, return_counts=True)
        terms = (pairs >> 32).astype(np.int32)
        return terms, (pairs & 0xFFFFFFFF).astype(np.int32), tfs.astype(np.float32)

    def remove(self, ids: Sequence[int]) -> None:
        with self._lock:
            for pid in ids:
                self._remove(pid)
        self._maybe_compact()

    def _remove(self, pid: int) -> None:
        row = self._row_of.pop(pid, None)
        if row is not None:
            self._live[row] = False
            self._has_vector[row] = False
            self._live_length -= int(self._lengths[row])

    def _code(self, value: str | None) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self._codes)
        return code

    def _grow(self) -> None:
        size = len(self._ids) * 2
        self._ids = _resized(self._ids, size, -1)
        self._live = _resized(self._live, size, False)
        self._has_vector = _resized(self._has_vector, size, False)
        self._lengths = _resized(self._lengths, size, 0)
        self._matrix = _resized(self._matrix, size, 0)
        self._tenants = _resized(self._tenants, size, 0)
        self._fields = {field: _resized(column, size, 0) for field, column in self._fields.items()}

    def _maybe_compact(self) -> None:
        dead = self._top - len(self._row_of)
        if dead > max(MIN_DEAD_ROWS, self._top // 4):
            self._compact()
        elif self._recent_count > max(MIN_MERGE_POSTINGS, len(self._rows) // 2):
            starts, rows, tfs = self._merged_postings(None)
            with self._lock:
                self._starts, self._rows, self._tfs = starts, rows, tfs
                self._chunks = []
                self._recent_count = 0

    def _merge_chunks(self) -> None:
        terms = np.concatenate([chunk[0] for chunk in self._chunks])
        order = np.argsort(terms, kind="stable")
        merged = (
            terms[order],
            np.concatenate([chunk[1] for chunk in self._chunks])[order],
            np.concatenate([chunk[2] for chunk in self._chunks])[order],
        )
        with self._lock:
            self._chunks = [merged]

    def _merged_postings(self, new_row: npt.NDArray[np.int64] | None) -> Postings:
        """The sorted part with the recent postings merged in; with `new_row` (old row ->
        new row, -1 when dropped), renumbered. Built aside: this thread is the only writer."""
        sorted_terms = np.repeat(
            np.arange(len(self._starts) - 1, dtype=np.int32), np.diff(self._starts)
        )
        terms = np.concatenate([sorted_terms, *(chunk[0] for chunk in self._chunks)])
        rows: npt.NDArray[np.integer[Any]] = np.concatenate(
            [self._rows, *(chunk[1] for chunk in self._chunks)]
        )
        tfs = np.concatenate([self._tfs, *(chunk[2] for chunk in self._chunks)])
        if new_row is not None:
            rows = new_row[rows]
            keep = rows >= 0
            terms, rows, tfs = terms[keep], rows[keep], tfs[keep]
        order = np.argsort(terms, kind="stable")
        term_count = len(self._term_ids)
        starts = np.zeros(term_count + 1, dtype=np.int64)
        np.cumsum(np.bincount(terms, minlength=term_count), out=starts[1:])
        return starts, rows[order].astype(np.int32), tfs[order]

    def _compact(self) -> None:
        """Drop the dead rows (their postings too) and merge the recent postings."""
        top = self._top
        kept = np.flatnonzero(self._live[:top])
        new_row = np.full(top, -1, dtype=np.int64)
        new_row[kept] = np.arange(len(kept))
        starts, rows, tfs = self._merged_postings(new_row)
        term_ids, word_ids, starts = self._used_terms(starts)
        capacity = max(1024, len(kept) + len(kept) // 2)
        moved = {
            "ids": _resized(self._ids[kept], capacity, -1),
            "live": _resized(self._live[kept], capacity, False),
            "has_vector": _resized(self._has_vector[kept], capacity, False),
            "lengths": _resized(self._lengths[kept], capacity, 0),
            "matrix": _resized(self._matrix[kept], capacity, 0),
            "tenants": _resized(self._tenants[kept], capacity, 0),
        }
        fields = {
            name: _resized(column[kept], capacity, 0) for name, column in self._fields.items()
        }
        codes = self._used_codes([moved["tenants"], *fields.values()])
        with self._lock:
            self._ids, self._live = moved["ids"], moved["live"]
            self._has_vector, self._lengths = moved["has_vector"], moved["lengths"]
            self._matrix, self._tenants = moved["matrix"], moved["tenants"]
            self._fields = fields
            self._top = len(kept)
            self._row_of = {int(pid): row for row, pid in enumerate(self._ids[: self._top])}
            self._starts, self._rows, self._tfs = starts, rows, tfs
            self._term_ids, self._word_ids = term_ids, word_ids
            self._codes = codes
            self._chunks = []
            self._recent_count = 0

    def _used_terms(
        self, starts: npt.NDArray[np.int64]
    ) -> tuple[dict[str, int], dict[str, int], npt.NDArray[np.int64]]:
        """The term and word dicts without the terms no passage holds any more, and the
        slices renumbered to match: a stream of new words (ids, typos, another language)
        would otherwise grow them for ever. Ids keep their order, so the postings stay."""
        counts = np.diff(starts)
        used = counts > 0
        if used.all():
            return self._term_ids, self._word_ids, starts
        new_id = (np.cumsum(used) - 1).tolist()
        keep = used.tolist()
        term_ids = {term: new_id[tid] for term, tid in self._term_ids.items() if keep[tid]}
        word_ids = {word: new_id[tid] for word, tid in self._word_ids.items() if keep[tid]}
        renumbered = np.zeros(len(term_ids) + 1, dtype=np.int64)
        np.cumsum(counts[used], out=renumbered[1:])
        return term_ids, word_ids, renumbered

    def _used_codes(self, columns: list[npt.NDArray[np.int32]]) -> dict[str | None, int]:
        """The tenant and filter values the kept rows still hold, coded again from 1; the
        `columns` are recoded in place. Tenants and filter values that come and go would
        otherwise grow the codes for ever, as terms would."""
        used = np.unique(np.concatenate([np.zeros(1, dtype=np.int32), *columns]))
        if len(used) == len(self._codes):
            return self._codes
        new_code = np.full(len(self._codes), -1, dtype=np.int32)
        new_code[used] = np.arange(len(used), dtype=np.int32)  # 0 (none) stays 0
        for column in columns:
            column[:] = new_code[column]
        keep = new_code.tolist()
        return {value: keep[code] for value, code in self._codes.items() if keep[code] >= 0}

    # -- searches -----------------------------------------------------------------------

    def keyword(
        self, terms: Sequence[str], k: int, scope: Scope, filters: Mapping[str, str]
    ) -> Ranked:
        """The `k` best passages by BM25 for `terms` (query_terms), among those `scope` and
        `filters` allow."""
        with self._lock:
            live = len(self._row_of)
            if not live or not terms:
                return []
            allowed = self._allowed(scope, filters)
            average = self._live_length / live or 1.0
            tids = [tid for term in terms if (tid := self._term_ids.get(term)) is not None]
            postings = self._postings(np.array(tids, dtype=np.int64))
            rows_parts: list[npt.NDArray[np.int32]] = []
            weights: list[npt.NDArray[np.float64]] = []
            for rows, tfs in postings:
                alive = self._live[rows]
                rows, tfs = rows[alive], tfs[alive]
                if not len(rows):
                    continue
                df = len(rows)
                # As FTS5 has it: a word in more than half the passages still counts a little.
                idf = max(math.log((live - df + 0.5) / (df + 0.5)), 1e-6)
                norm = K1 * (1 - B + B * self._lengths[rows].astype(np.float64) / average)
                rows_parts.append(rows)
                weights.append(idf * tfs * (K1 + 1) / (tfs + norm))
            if not rows_parts:
                return []
            scores = np.bincount(
                np.concatenate(rows_parts), np.concatenate(weights), minlength=self._top
            )
            candidates = np.flatnonzero(scores)
            if allowed is not None:
                candidates = candidates[allowed[candidates]]
            return self._best(candidates, scores[candidates], k)

    def vector(
        self, query: npt.NDArray[np.float32], k: int, scope: Scope, filters: Mapping[str, str]
    ) -> Ranked:
        """The `k` passages nearest to `query` (unit length) by cosine, among those `scope`
        and `filters` allow."""
        with self._lock:
            if not self._row_of:
                return []
            allowed = self._allowed(scope, filters)
            top = self._top
            scores = self._matrix[:top] @ query
            mask = self._has_vector[:top] if allowed is None else self._has_vector[:top] & allowed
            # Rank the allowed rows only: a partition over many -inf ties is slower.
            rows = np.flatnonzero(mask)
            return self._best(rows, scores[rows], k)

    def _postings(
        self, tids: npt.NDArray[np.int64]
    ) -> list[tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]]:
        """Every (rows, term frequencies) of each term in `tids`, dead rows included."""
        parts: list[list[tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]]] = []
        sorted_terms = len(self._starts) - 1
        for tid in tids.tolist():
            if tid < sorted_terms:
                start, end = self._starts[tid], self._starts[tid + 1]
                parts.append([(self._rows[start:end], self._tfs[start:end])])
            else:
                parts.append([])
        for terms, rows, tfs in self._chunks:
            firsts = np.searchsorted(terms, tids, "left").tolist()
            lasts = np.searchsorted(terms, tids, "right").tolist()
            for found, first, last in zip(parts, firsts, lasts, strict=True):
                if last > first:
                    found.append((rows[first:last], tfs[first:last]))
        return [
            (np.concatenate([r for r, _ in found]), np.concatenate([t for _, t in found]))
            if len(found) > 1
            else found[0]
            for found in parts
            if found
        ]

    def _allowed(self, scope: Scope, filters: Mapping[str, str]) -> npt.NDArray[np.bool_] | None:
        """The rows `scope` and `filters` allow; None: all of them."""
        top = self._top
        mask: npt.NDArray[np.bool_] | None = None
        if scope is not None:
            name, shared = scope
            code = self._codes.get(name, -1) if name is not None else -1
            tenants = self._tenants[:top]
            mask = tenants == code
            if shared:
                mask |= tenants == 0
        for field, value in filters.items():
            column = self._fields.get(field)
            code = self._codes.get(value, -1)
            if column is None or code < 0:
                return np.zeros(top, dtype=bool)
            matches = column[:top] == code
            mask = matches if mask is None else mask & matches
        return mask

    def _best(self, rows: npt.NDArray[np.intp], scores: npt.NDArray[Any], k: int) -> Ranked:
        count = min(k, len(rows))
        if count <= 0:
            return []
        top = np.argpartition(-scores, count - 1)[:count]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(self._ids[rows[i]]), float(scores[i])) for i in top]


def _resized(values: npt.NDArray[T], size: int, fill: object) -> npt.NDArray[T]:
    """`values` in an array of `size` rows, the new rows set to `fill`."""
    out = np.full((size, *values.shape[1:]), fill, dtype=values.dtype)
    count = min(size, len(values))
    out[:count] = values[:count]
    return out
