"""Exact vector search in numpy: one matrix per collection, a dot product per query.

Chosen over sqlite-vec and usearch after measuring them side by side (docs/vector-search.md):
at 100,000 passages a brute-force scan is a few milliseconds, exact, needs no build step,
takes any filter as a boolean mask, and an update is a row overwritten or masked.
Thread-safe: the materializer adds and removes while searches run in other threads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

Row = tuple[int, npt.NDArray[np.float32], str | None, Mapping[str, str | None]]
"""(passage id, unit vector, tenant, filter field -> value)"""


class VectorIndex:
    def __init__(self, dimensions: int, capacity: int = 1024) -> None:
        self.dimensions = dimensions
        self._lock = threading.Lock()
        self._matrix = np.zeros((capacity, dimensions), dtype=np.float32)
        self._ids = np.full(capacity, -1, dtype=np.int64)  # -1: a free row
        self._tenants = np.zeros(capacity, dtype=np.int32)  # codes; 0: no tenant (shared)
        self._fields: dict[str, npt.NDArray[np.int32]] = {}
        self._codes: dict[str | None, int] = {None: 0}
        self._row_of: dict[int, int] = {}
        self._free: list[int] = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._row_of)

    def _code(self, value: str | None) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self._codes)
        return code

    def add(self, rows: Sequence[Row]) -> None:
        with self._lock:
            for pid, vector, tenant, fields in rows:
                if vector.shape != (self.dimensions,):
                    continue  # embedded at another size: keyword search still finds it
                if pid in self._row_of:
                    row = self._row_of[pid]
                else:
                    if not self._free:
                        self._grow()
                    row = self._free.pop()
                self._matrix[row] = vector
                self._ids[row] = pid
                self._tenants[row] = self._code(tenant)
                for field, value in fields.items():
                    column = self._fields.get(field)
                    if column is None:
                        column = self._fields[field] = np.zeros(len(self._ids), dtype=np.int32)
                    column[row] = self._code(value)
                self._row_of[pid] = row

    def remove(self, ids: Sequence[int]) -> None:
        with self._lock:
            for pid in ids:
                row = self._row_of.pop(pid, None)
                if row is not None:
                    self._ids[row] = -1
                    self._matrix[row] = 0.0
                    self._free.append(row)

    def _grow(self) -> None:
        old = len(self._ids)
        new = old * 2
        self._matrix = np.vstack([self._matrix, np.zeros((old, self.dimensions), np.float32)])
        self._ids = np.concatenate([self._ids, np.full(old, -1, dtype=np.int64)])
        self._tenants = np.concatenate([self._tenants, np.zeros(old, dtype=np.int32)])
        for field, column in self._fields.items():
            self._fields[field] = np.concatenate([column, np.zeros(old, dtype=np.int32)])
        self._free.extend(range(new - 1, old - 1, -1))

    def search(
        self,
        query: npt.NDArray[np.float32],
        k: int,
        tenant: tuple[str | None, bool] | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> list[tuple[int, float]]:
        """The `k` nearest (passage id, cosine), best first. `tenant` = (name, shared too):
        only that tenant's rows (and rows without a tenant, when shared); `filters`: rows
        whose field equals the value."""
        with self._lock:
            if not self._row_of:
                return []
            scores = self._matrix @ query
            mask = self._ids >= 0
            if tenant is not None:
                name, shared = tenant
                code = self._codes.get(name, -1) if name is not None else -1
                own = self._tenants == code
                mask &= (own | (self._tenants == 0)) if shared else own
            for field, value in (filters or {}).items():
                column = self._fields.get(field)
                code = self._codes.get(value, -1)
                if column is None or code < 0:
                    return []
                mask &= column == code
            # Rank the allowed rows only: a partition over many -inf ties is slower.
            rows = np.flatnonzero(mask)
            count = min(k, len(rows))
            if count <= 0:
                return []
            allowed = scores[rows]
            top = np.argpartition(-allowed, count - 1)[:count]
            top = top[np.argsort(-allowed[top])]
            return [(int(self._ids[rows[i]]), float(allowed[i])) for i in top]
