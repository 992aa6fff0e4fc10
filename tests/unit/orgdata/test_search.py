"""Retrieval over the sample policies: recall on the labelled queries, tenants apart,
filters, and the query syntax users cannot break."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from llmflow.services.modelsim.answers import embedding_vector
from llmflow.services.orgdata import OrgDataError, OrgDataStore, Retriever, sample_records
from llmflow.services.orgdata.search import Mode
from llmflow.services.orgdata.terms import query_terms
from llmflow.topologies.collections import load_collections
from tests.unit.orgdata.helpers import apply_records

QUERIES = Path(__file__).parents[3] / "dev" / "bench" / "retrieval_queries.jsonl"
COLLECTIONS = load_collections()
POLICIES = COLLECTIONS["policies"]


@pytest.fixture(scope="module")
def retriever() -> Iterator[Retriever]:
    with OrgDataStore(":memory:", COLLECTIONS) as store:
        apply_records(store, "policies", sample_records()["policies"])
        yield Retriever(store)


def _vector(text: str) -> np.ndarray:
    spec = POLICIES.embedding
    return np.asarray(embedding_vector(spec.model, text, spec.dimensions), dtype=np.float32)


def _search(retriever: Retriever, query: str, mode: Mode = "hybrid", **kw: object) -> list[str]:
    options: dict[str, object] = {"top_k": 3, "tenant": None, "filters": {}} | kw
    hits = retriever.search("policies", query, _vector(query), mode=mode, **options)  # type: ignore[arg-type]
    return [hit.key for hit in hits]


@pytest.mark.parametrize(("mode", "floor"), [("keyword", 0.9), ("vector", 0.8), ("hybrid", 0.9)])
def test_recall_at_3_on_the_labelled_queries(
    retriever: Retriever, mode: Mode, floor: float
) -> None:
    labelled = [json.loads(line) for line in QUERIES.read_text().splitlines() if line.strip()]
    assert len(labelled) >= 30
    found = [
        q["expected"] in _search(retriever, q["query"], mode, tenant=q.get("tenant"))
        for q in labelled
    ]
    assert sum(found) / len(found) >= floor


def test_tenant_a_never_sees_tenant_b(retriever: Retriever) -> None:
    records = sample_records()["policies"]
    own = {r["id"]: r["tenant"] for r in records if r.get("tenant")}
    assert set(own.values()) == {"acme-eu", "acme-us"}
    for doc, tenant in own.items():
        record = next(r for r in records if r["id"] == doc)
        query = f"{record['title']} {record['text'][:300]}"
        for mode in ("keyword", "vector", "hybrid"):
            for reader in ("acme-eu", "acme-us", None):
                keys = _search(retriever, query, mode, tenant=reader, top_k=50)
                foreign = [k for k in keys if own.get(k) not in (None, reader)]
                assert foreign == [], (mode, reader, foreign)
                if reader == tenant:
                    assert doc in keys, (mode, reader)


def test_filters_keep_only_matching_records(retriever: Retriever) -> None:
    keys = _search(retriever, "Rückerstattung refund", top_k=10, filters={"language": "de"})
    assert keys and all(key.endswith("-DE") for key in keys)
    assert _search(retriever, "refund", filters={"language": "xx"}) == []
    with pytest.raises(OrgDataError, match="no filter region"):
        _search(retriever, "refund", filters={"region": "eu"})


def test_hits_say_where_they_came_from(retriever: Retriever) -> None:
    hits = retriever.search(
        "policies", "refund within 30 days", None, top_k=2, mode="keyword", tenant=None, filters={}
    )
    assert len(hits) == 2
    assert hits[0].name == f"policies/{hits[0].key}#{hits[0].n}"
    assert hits[0].score >= hits[1].score > 0
    assert hits[0].record["id"] == hits[0].key and len(hits[0].version) == 16
    with pytest.raises(OrgDataError, match="needs the query's embedding"):
        retriever.search("policies", "x", None, top_k=1, mode="hybrid", tenant=None, filters={})
    with pytest.raises(OrgDataError, match="not a document collection"):
        retriever.search("customers", "x", None, top_k=1, mode="keyword", tenant=None, filters={})


@pytest.mark.parametrize(
    "query", ['"', "NEAR(a b)", "a AND OR NOT", "col:value", "*", "^x", "'); DROP TABLE x;--", ""]
)
def test_any_text_is_a_safe_query(retriever: Retriever, query: str) -> None:
    _search(retriever, query, "keyword")  # no error, whatever the event says
    assert all(term.isalnum() for term in query_terms(query))
