"""Retrieval over a collection: keyword (BM25), vector (cosine) or both, fused by
reciprocal rank (RRF: each list gives a passage 1 / (60 + rank); the sums are ranked).

Runs in a thread: numpy and SQLite release the GIL, and the event loop keeps going.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from llmflow.services.orgdata.store import OrgDataError, OrgDataStore, stored_data
from llmflow.services.orgdata.terms import query_terms

Mode = Literal["keyword", "vector", "hybrid"]
RRF_K = 60
CANDIDATES = 50
"""Passages each list contributes to the fusion."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A retrieved passage."""

    id: int
    table: str
    key: str
    n: int
    text: str
    score: float
    version: str
    """Of the record the passage belongs to."""
    offset: int
    record: dict[str, Any]
    """The record's data."""

    @property
    def name(self) -> str:
        return f"{self.table}/{self.key}#{self.n}"


class Retriever:
    def __init__(self, store: OrgDataStore) -> None:
        self._store = store

    def search(
        self,
        collection: str,
        query: str,
        vector: npt.NDArray[np.float32] | None,
        *,
        top_k: int,
        mode: Mode,
        tenant: str | None,
        filters: Mapping[str, str],
    ) -> list[Hit]:
        """The `top_k` passages of `collection` for `query`, best first. `tenant` sees its
        own documents (and shared ones, when the collection says so); other tenants'
        documents are never candidates."""
        spec = self._store.collections.get(collection)
        if spec is None:
            raise OrgDataError(f"{collection!r} is not a document collection")
        unknown = sorted(set(filters) - set(spec.filters))
        if unknown:
            raise OrgDataError(f"{collection!r} has no filter {', '.join(unknown)}")
        scope = (tenant, spec.shared) if spec.tenant_field else None
        lists: list[list[tuple[int, float]]] = []
        want = top_k if mode != "hybrid" else max(CANDIDATES, top_k)
        index = self._store.indexes[collection]
        if mode in ("keyword", "hybrid"):
            terms = query_terms(query)
            if terms:
                lists.append(index.keyword(terms, want, scope, filters))
        if mode in ("vector", "hybrid"):
            if vector is None:
                raise OrgDataError(f"{mode} retrieval needs the query's embedding")
            unit = np.asarray(vector, dtype=np.float32)
            norm = float(np.linalg.norm(unit))
            if unit.shape == (spec.embedding.dimensions,) and norm > 0:
                lists.append(index.vector(unit / norm, want, scope, filters))
            else:
                raise OrgDataError(
                    f"the query embedding has {unit.size} values, the collection "
                    f"{spec.embedding.dimensions}"
                )
        if not lists:
            return []
        ranked = lists[0][:top_k] if len(lists) == 1 else _fuse(lists)[:top_k]
        found = self._store.passages(pid for pid, _ in ranked)
        return [
            Hit(
                pid,
                p.table,
                p.key,
                p.n,
                p.text,
                round(score, 6),
                p.version,
                p.offset,
                stored_data(p.data),
            )
            for pid, score in ranked
            if (p := found.get(pid)) is not None  # removed since it was ranked
        ]


def _fuse(lists: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    scores: dict[int, float] = {}
    for ranking in lists:
        for rank, (pid, _) in enumerate(ranking, start=1):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(scores.items(), key=lambda item: -item[1])
