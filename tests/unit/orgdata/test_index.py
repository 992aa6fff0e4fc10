"""The in-memory passage index against plain reference computations: BM25 scores, cosine
ranking, tenant and filter scopes, through adds, replacements, removals, chunk merges and
compactions, and while other threads search."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter

import numpy as np
import pytest

from llmflow.services.orgdata import index as index_module
from llmflow.services.orgdata.index import K1, B, Entry, PassageIndex
from llmflow.services.orgdata.terms import query_terms, stem, words

DIMS = 8
VOCABULARY = [f"w{n}" for n in range(40)] + ["refunds", "refunded", "café", "Ünïcode"]
TENANTS = [None, "acme", "globex"]


def _entry(rng: random.Random, pid: int) -> Entry:
    text = " ".join(rng.choices(VOCABULARY, k=rng.randint(1, 30)))
    vector = np.asarray([rng.gauss(0, 1) for _ in range(DIMS)], dtype=np.float32)
    vector /= np.linalg.norm(vector)
    return Entry(pid, text, vector, rng.choice(TENANTS), {"lang": rng.choice(["en", "de"])})


def _reference_bm25(live: dict[int, Entry], terms: list[str]) -> dict[int, float]:
    counted = {pid: Counter(stem(words(e.text))) for pid, e in live.items()}
    lengths = {pid: sum(c.values()) for pid, c in counted.items()}
    average = sum(lengths.values()) / len(lengths)
    scores: dict[int, float] = {}
    for term in terms:
        having = [pid for pid, c in counted.items() if term in c]
        if not having:
            continue
        df = len(having)
        idf = max(math.log((len(live) - df + 0.5) / (df + 0.5)), 1e-6)
        for pid in having:
            tf = counted[pid][term]
            norm = K1 * (1 - B + B * lengths[pid] / average)
            scores[pid] = scores.get(pid, 0.0) + idf * tf * (K1 + 1) / (tf + norm)
    return scores


def _allowed(entry: Entry, tenant: tuple[str | None, bool] | None, lang: str | None) -> bool:
    if lang is not None and entry.fields["lang"] != lang:
        return False
    if tenant is None:
        return True
    name, shared = tenant
    return entry.tenant == name or (shared and entry.tenant is None)


def _check(index: PassageIndex, live: dict[int, Entry], rng: random.Random) -> None:
    assert len(index) == len(live)
    for _ in range(5):
        terms = query_terms(" ".join(rng.sample(VOCABULARY, rng.randint(1, 4))))
        tenant = rng.choice([None, ("acme", True), ("acme", False), ("nobody", True)])
        lang = rng.choice([None, "en"])
        filters = {"lang": lang} if lang else {}
        allowed = {pid: e for pid, e in live.items() if _allowed(e, tenant, lang)}
        # keyword: every allowed match, scored as the reference scores it
        got = index.keyword(terms, 10_000, tenant, filters)
        expected = _reference_bm25(live, terms) if live else {}
        expected = {pid: score for pid, score in expected.items() if pid in allowed}
        assert {pid for pid, _ in got} == set(expected)
        for pid, score in got:
            assert score == pytest.approx(expected[pid], rel=1e-5)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        # vector: the allowed rows by cosine, best first
        query = np.asarray([rng.gauss(0, 1) for _ in range(DIMS)], dtype=np.float32)
        query /= np.linalg.norm(query)
        nearest = index.vector(query, 5, tenant, filters)
        cosines = sorted(
            ((float(e.vector @ query), pid) for pid, e in allowed.items() if e.vector is not None),
            reverse=True,
        )
        assert [pid for pid, _ in nearest] == [pid for _, pid in cosines[:5]]


@pytest.mark.parametrize("seed", range(6))
def test_searches_match_reference_through_updates_merges_and_compactions(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small thresholds: chunks merge and rows compact many times in a short run.
    monkeypatch.setattr(index_module, "BATCH", 7)
    monkeypatch.setattr(index_module, "MAX_CHUNKS", 3)
    monkeypatch.setattr(index_module, "MIN_DEAD_ROWS", 4)
    monkeypatch.setattr(index_module, "MIN_MERGE_POSTINGS", 50)
    rng = random.Random(seed)
    index = PassageIndex(DIMS, capacity=4)
    live: dict[int, Entry] = {}
    next_id = 0
    for _ in range(40):
        action = rng.random()
        if action < 0.5 or not live:
            batch = []
            for _ in range(rng.randint(1, 20)):
                if live and rng.random() < 0.3:
                    pid = rng.choice(list(live))  # a new version of a passage
                else:
                    pid, next_id = next_id, next_id + 1
                batch.append(_entry(rng, pid))
            index.add(batch)
            live.update((e.id, e) for e in batch)  # the last of an id in a batch wins
        else:
            gone = rng.sample(list(live), rng.randint(1, len(live)))
            index.remove([*gone, 10**9])  # an id never indexed is ignored
            for pid in gone:
                del live[pid]
        _check(index, live, rng)


def test_words_and_tenants_no_passage_holds_any_more_leave_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stream of new words (order ids, typos) or tenants must not grow the index for
    ever: what only dead rows held goes at compaction, and what is left keeps its rows."""
    monkeypatch.setattr(index_module, "MIN_DEAD_ROWS", 4)
    index = PassageIndex(DIMS)
    live: dict[int, Entry] = {}
    for round_ in range(60):  # each round replaces the same 10 passages
        batch = [
            Entry(pid, f"refunds order{round_}x{pid} w{pid}", None, f"t{round_}", {"v": f"v{pid}"})
            for pid in range(10)
        ]
        index.add(batch)
        live.update((entry.id, entry) for entry in batch)
    assert len(index._term_ids) < 100 and len(index._word_ids) < 100  # 600 words went by
    assert len(index._codes) < 40  # 60 tenants went by
    assert [pid for pid, _ in index.keyword(query_terms("order59x3"), 5, None, {})] == [3]
    assert index.keyword(query_terms("order0x3"), 5, None, {}) == []
    for query in ("refunds w7 order59x7", "w2 order58x2"):
        terms = query_terms(query)
        expected = _reference_bm25(live, terms)
        got = dict(index.keyword(terms, 100, ("t59", False), {}))
        assert got.keys() == expected.keys()
        for pid, score in expected.items():
            assert got[pid] == pytest.approx(score, rel=1e-5)
    refunds = query_terms("refunds")
    assert index.keyword(refunds, 100, ("t58", True), {}) == []
    assert [pid for pid, _ in index.keyword(refunds, 100, ("t59", False), {"v": "v4"})] == [4]
    index.remove(list(range(10)))
    index.add([Entry(99, "order59x3 again", None, "t60", {"v": "v5"})])
    assert [pid for pid, _ in index.keyword(query_terms("order59x3"), 5, None, {})] == [99]
    assert index.keyword(refunds, 5, None, {}) == []
    assert index.keyword(query_terms("again"), 5, None, {"v": "v4"}) == []
    assert [pid for pid, _ in index.keyword(query_terms("again"), 5, ("t60", False), {})] == [99]


def test_stemming_folding_and_idf_of_common_words() -> None:
    index = PassageIndex(DIMS)
    index.add(
        [
            Entry(1, "Refunds are REFUNDED within 30 days", None, None, {}),
            Entry(2, "Le café naïve", None, None, {}),
            Entry(3, "snake_case words, split", None, None, {}),
        ]
    )
    assert [pid for pid, _ in index.keyword(query_terms("refund"), 5, None, {})] == [1]
    assert [pid for pid, _ in index.keyword(query_terms("CAFE naive"), 5, None, {})] == [2]
    assert [pid for pid, _ in index.keyword(query_terms("case"), 5, None, {})] == [3]
    assert index.keyword(query_terms("the and of"), 5, None, {}) == []  # stop words only
    # No vectors: vector search finds nothing, keyword search still works.
    assert index.vector(np.ones(DIMS, dtype=np.float32) / math.sqrt(DIMS), 5, None, {}) == []


def test_a_vector_of_another_size_is_kept_for_keyword_search_only() -> None:
    index = PassageIndex(DIMS)
    index.add([Entry(1, "alpha", np.ones(DIMS + 1, dtype=np.float32), None, {})])
    assert index.vectors == 0
    assert [pid for pid, _ in index.keyword(["alpha"], 5, None, {})] == [1]


def test_unknown_filter_values_and_fields_match_nothing() -> None:
    index = PassageIndex(DIMS)
    vector = np.ones(DIMS, dtype=np.float32) / math.sqrt(DIMS)
    index.add([Entry(1, "alpha", vector, None, {"lang": "en"})])
    for filters in ({"lang": "fr"}, {"region": "eu"}):
        assert index.keyword(["alpha"], 5, None, filters) == []
        assert index.vector(vector, 5, None, filters) == []
    assert len(index.keyword(["alpha"], 5, None, {"lang": "en"})) == 1


def test_hostile_text_is_indexed_without_harm() -> None:
    index = PassageIndex(DIMS)
    texts = [
        "x" * 1_000_000,  # one enormous word
        "\x00\x01\x02 nul bytes \ud7ff",
        "🙂" * 10_000 + " emoji",
        "   ",
        "Ω≈ç√∫ ﬁ ǅ İstanbul ΣΑΣ",
    ]
    index.add([Entry(n, text, None, None, {}) for n, text in enumerate(texts)])
    assert len(index) == len(texts)
    assert [pid for pid, _ in index.keyword(query_terms("emoji"), 5, None, {})] == [2]
    assert [pid for pid, _ in index.keyword(query_terms("nul"), 5, None, {})] == [1]
    assert index.keyword(query_terms("x" * 1_000_000), 5, None, {})[0][0] == 0


def test_searches_run_while_the_writer_adds_removes_and_compacts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(index_module, "BATCH", 16)
    monkeypatch.setattr(index_module, "MAX_CHUNKS", 4)
    monkeypatch.setattr(index_module, "MIN_DEAD_ROWS", 8)
    monkeypatch.setattr(index_module, "MIN_MERGE_POSTINGS", 200)
    index = PassageIndex(DIMS, capacity=4)
    rng = random.Random(1)
    everything = [_entry(rng, pid) for pid in range(3000)]
    tenants = {e.id: e.tenant for e in everything}
    stop = threading.Event()
    errors: list[BaseException] = []

    def search() -> None:
        local = random.Random(threading.get_ident())
        try:
            while not stop.is_set():
                query = np.ones(DIMS, dtype=np.float32) / math.sqrt(DIMS)
                for pid, _ in index.vector(query, 10, ("acme", False), {}):
                    assert tenants[pid] == "acme"
                terms = query_terms(" ".join(local.sample(VOCABULARY, 3)))
                for pid, _ in index.keyword(terms, 10, ("globex", True), {}):
                    assert tenants[pid] in ("globex", None)
        except BaseException as exc:
            errors.append(exc)

    readers = [threading.Thread(target=search) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for first in range(0, 3000, 100):
            index.add(everything[first : first + 100])
            index.remove([e.id for e in everything[first : first + 60]])
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert errors == []
    assert len(index) == 30 * 40
