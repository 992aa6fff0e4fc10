"""`compare`: live and shadow results of the same events, joined and side by side."""

from __future__ import annotations

import math
from typing import Any

import pytest

from llmflow.schemas.outputs import Output, Totals
from llmflow.schemas.results import Result
from llmflow.services.shadow.compare import (
    CHANGED_SHOWN,
    ENUM_MAX_VALUES,
    compare,
    cosine,
    enum_fields,
    text_similarity,
)
from llmflow.topologies.loader import load_topology
from tests.unit.shadow.helpers import TOPOLOGY, call, dead_letter, output, parked


def _classify(event: str, **answer: Any) -> Output:
    return output(event, [call("classify", dict(answer))])


# --- joining ------------------------------------------------------------------------------


def test_only_events_in_both_sides_are_compared() -> None:
    live = [output(e, [call("classify", "x", tokens_in=100)]) for e in ("e1", "e2", "e3")]
    shadow = [output(e, [call("classify", "x", tokens_in=7)]) for e in ("e2", "e3", "e4", "e5")]
    report = compare(live, shadow)
    assert report["events"] == {
        "live_results": 3,
        "shadow_results": 4,
        "compared": 2,
        "only_in_shadow": 2,
    }
    classify = report["calls"]["classify"]
    # e1 (live only) and e4, e5 (shadow only) count nowhere.
    assert classify["pairs"] == 2
    assert classify["live"]["answered"] == 2 and classify["live"]["tokens_in"] == 200
    assert classify["shadow"]["answered"] == 2 and classify["shadow"]["tokens_in"] == 14
    assert report["sides"]["live"]["outputs"] == report["sides"]["shadow"]["outputs"] == 2


def test_nothing_in_common() -> None:
    report = compare([output("a", [call("c", "x")])], [output("b", [call("c", "x")])])
    assert report["events"]["compared"] == 0 and report["events"]["only_in_shadow"] == 1
    assert report["calls"] == {}
    assert report["changed_most"] == []
    assert report["sides"]["live"]["dead_letter_rate"] is None
    assert report["sides"]["live"]["latency_p50_ms"] is None


def test_the_last_result_of_an_event_wins() -> None:
    live = [output("e1", [call("classify", "old")]), output("e1", [call("classify", "new")])]
    shadow = [output("e1", [call("classify", "new")])]
    report = compare(live, shadow)
    assert report["events"]["live_results"] == 1
    assert report["calls"]["classify"]["exact_match"] == 1.0
    assert report["calls"]["classify"]["live"]["answered"] == 1
    assert report["changed_most"] == []

    # The other order: the earlier live answer agreed, the last one does not.
    report = compare(list(reversed(live)), shadow)
    assert report["calls"]["classify"]["exact_match"] == 0.0
    assert [c["event"] for c in report["changed_most"]] == ["id:e1@0:0"]


def test_shadow_duplicates_count_once() -> None:
    live = [output("e1", [call("c", "x")])]
    shadow: list[Result] = [dead_letter("e1"), output("e1", [call("c", "x")])]
    report = compare(live, shadow)
    assert report["events"]["shadow_results"] == 1
    assert report["sides"]["shadow"]["dead_letters"] == 0
    assert report["sides"]["shadow"]["outputs"] == 1


def test_dead_letters_without_an_event_id_are_joined_by_where_they_were_read() -> None:
    live = [dead_letter(None, partition=1, offset=7), dead_letter(None, partition=2, offset=7)]
    shadow = [
        dead_letter(None, partition=1, offset=7),
        dead_letter(None, partition=1, offset=8),
        dead_letter(None, partition=3, offset=7),
    ]
    report = compare(live, shadow)
    assert report["events"]["compared"] == 1
    assert report["events"]["only_in_shadow"] == 2
    assert report["sides"]["shadow"]["dead_letters"] == 1
    assert report["sides"]["shadow"]["dead_letter_rate"] == 1.0


def test_an_output_and_a_dead_letter_of_the_same_event_are_joined() -> None:
    live = [output("e1", [call("c", "x")]), output("e2", [call("c", "x")])]
    shadow: list[Result] = [dead_letter("e1"), output("e2", [call("c", "x")])]
    report = compare(live, shadow)
    assert report["events"]["compared"] == 2
    assert report["sides"]["shadow"]["dead_letter_rate"] == 0.5
    assert report["sides"]["live"]["dead_letter_rate"] == 0.0
    # Only e2 has answers on both sides.
    assert report["calls"]["c"]["pairs"] == 1
    assert report["calls"]["c"]["live"]["answered"] == 2


# --- structured answers -------------------------------------------------------------------


def test_field_agreement_per_field() -> None:
    live = [
        _classify("e1", priority="high", category="billing", score=1),
        _classify("e2", priority="low", category="billing", score=2),
        _classify("e3", priority="low", category="tech", score=3),
        _classify("e4", priority="urgent", category="tech", score=4),
    ]
    shadow = [
        _classify("e1", priority="high", category="billing", score=1),
        _classify("e2", priority="high", category="billing", score=2),
        _classify("e3", priority="low", category="account", score=30),
        _classify("e4", priority="high", category="tech"),  # no score
    ]
    classify = compare(live, shadow)["calls"]["classify"]
    assert classify["pairs"] == 4
    assert classify["exact_match"] == 0.25
    assert classify["field_agreement"] == {"category": 0.75, "priority": 0.5, "score": 0.5}
    assert classify["similarity_mean"] is None


def test_change_of_a_structured_answer_is_the_share_of_fields_that_differ() -> None:
    live = [_classify("e1", a="x", b="y", c="z", d="w")]
    shadow = [_classify("e1", a="x", b="y", c="z", d="other")]
    changed = compare(live, shadow)["changed_most"]
    assert changed == [{"event": "id:e1@0:0", "change": 0.25, "calls": {"classify": 0.25}}]


def test_confusion_table_of_a_declared_enum_field() -> None:
    pairs = [("high", "high"), ("high", "urgent"), ("low", "low"), ("low", "low"), ("low", None)]
    live = [_classify(f"e{n}", priority=a, category="x") for n, (a, _) in enumerate(pairs)]
    shadow = [
        _classify(f"e{n}", category="x", **({"priority": b} if b else {}))
        for n, (_, b) in enumerate(pairs)
    ]
    classify = compare(live, shadow, enums={"classify": {"priority"}})["calls"]["classify"]
    # Only the declared field gets a table, though `category` has a single value.
    assert classify["confusion"] == {
        "priority": {
            "high": {"high": 1, "urgent": 1},
            "low": {"(missing)": 1, "low": 2},
        }
    }
    assert classify["field_agreement"]["priority"] == 0.6


def test_confusion_tables_are_guessed_for_fields_of_few_values() -> None:
    n = ENUM_MAX_VALUES + 1
    live = [
        _classify(f"e{i}", few=f"v{i % ENUM_MAX_VALUES}", many=f"live{i}", score=i)
        for i in range(n)
    ]
    shadow = [
        _classify(f"e{i}", few=f"v{i % ENUM_MAX_VALUES}", many=f"live{i}", score=i)
        for i in range(n)
    ]
    classify = compare(live, shadow)["calls"]["classify"]
    # `few` has exactly ENUM_MAX_VALUES values, `many` one more; numbers never get a table.
    assert set(classify["confusion"]) == {"few"}
    few = classify["confusion"]["few"]
    assert len(few) == ENUM_MAX_VALUES
    assert few["v0"] == {"v0": 2} and few["v1"] == {"v1": 1}
    assert classify["field_agreement"] == {"few": 1.0, "many": 1.0, "score": 1.0}

    # A call the `enums` mapping names no enum field for is guessed as well.
    guessed = compare(live, shadow, enums={"classify": set()})["calls"]["classify"]
    assert set(guessed["confusion"]) == {"few"}
    # Declared enums replace the guess.
    declared = compare(live, shadow, enums={"classify": {"many"}})["calls"]["classify"]
    assert set(declared["confusion"]) == {"many"}


def test_values_of_both_sides_count_towards_the_guess() -> None:
    # Each side alone has ENUM_MAX_VALUES values; together they have twice as many.
    live = [_classify(f"e{i}", label=f"a{i}") for i in range(ENUM_MAX_VALUES)]
    shadow = [_classify(f"e{i}", label=f"b{i}") for i in range(ENUM_MAX_VALUES)]
    assert compare(live, shadow)["calls"]["classify"]["confusion"] == {}


# --- text and vectors ---------------------------------------------------------------------


def test_text_answers_are_compared_by_similarity() -> None:
    a, b = "The customer wants a refund.", "The customer asks for a refund."
    ratio = _lcs_ratio(a, b)
    live = [output("e1", [call("summarize", a)]), output("e2", [call("summarize", "same")])]
    shadow = [output("e1", [call("summarize", b)]), output("e2", [call("summarize", "same")])]
    report = compare(live, shadow)
    summarize = report["calls"]["summarize"]
    assert summarize["similarity_min"] == pytest.approx(ratio, abs=1e-6)
    assert summarize["similarity_mean"] == pytest.approx((ratio + 1.0) / 2, abs=1e-6)
    assert summarize["exact_match"] == 0.5
    assert summarize["field_agreement"] == {} and summarize["confusion"] == {}
    assert [c["event"] for c in report["changed_most"]] == ["id:e1@0:0"]
    assert report["changed_most"][0]["change"] == pytest.approx(1 - ratio, abs=1e-6)


def test_vector_answers_are_compared_by_cosine() -> None:
    live = [output("e1", [call("embed", [1.0, 0.0], kind="embedding")])]
    shadow = [output("e1", [call("embed", [1.0, 1.0], kind="embedding")])]
    report = compare(live, shadow)
    assert report["calls"]["embed"]["similarity_mean"] == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert report["changed_most"][0]["change"] == pytest.approx(1 - math.sqrt(0.5), abs=1e-6)


def test_answers_of_different_kinds_are_equal_or_not() -> None:
    live = [output("e1", [call("c", "text")]), output("e2", [call("c", ["a", "b"])])]
    shadow = [output("e1", [call("c", {"x": 1})]), output("e2", [call("c", ["a", "b"])])]
    c = compare(live, shadow)["calls"]["c"]
    assert c["similarity_min"] == 0.0 and c["similarity_mean"] == 0.5


@pytest.mark.parametrize("answer", [[], [0.0, 0.0]])
def test_identical_vectors_without_a_direction_did_not_change(answer: list[float]) -> None:
    report = compare([output("e1", [call("c", answer)])], [output("e1", [call("c", answer)])])
    assert report["calls"]["c"]["exact_match"] == 1.0
    assert report["changed_most"] == []


# --- calls answered on one side, skipped calls --------------------------------------------


def test_a_call_answered_on_one_side_only_changed_entirely() -> None:
    live = [output("e1", [call("classify", "x"), call("draft", "reply")])]
    shadow = [output("e1", [call("classify", "x")], skipped=["draft"])]
    report = compare(live, shadow)
    assert report["changed_most"] == [
        {"event": "id:e1@0:0", "change": 0.5, "calls": {"classify": 0.0, "draft": 1.0}}
    ]
    draft = report["calls"]["draft"]
    assert draft["pairs"] == 0 and draft["exact_match"] is None
    assert draft["live"]["answered"] == 1 and draft["shadow"]["answered"] == 0
    assert draft["shadow"]["skipped"] == 1


def test_skip_counts_and_rates_per_side() -> None:
    live = [
        output("e1", [call("classify", "x"), call("draft", "d")]),
        output("e2", [call("classify", "x")], skipped=["draft"]),
        output("e3", [call("classify", "x"), call("draft", "d")]),
        output("e4", [call("classify", "x"), call("draft", "d")]),
    ]
    shadow: list[Result] = [
        output(f"e{i}", [call("classify", "x")], skipped=["draft"]) for i in (1, 2, 3)
    ]
    shadow.append(parked("e4"))  # no output: not in the skip rate's denominator
    draft = compare(live, shadow)["calls"]["draft"]
    assert draft["live"] == {
        "answered": 3,
        "skipped": 1,
        "skip_rate": 0.25,
        "tokens_in": 30,
        "tokens_out": 15,
        "cost_usd": 0.003,
        "latency_p50_ms": 100.0,
        "latency_p95_ms": 100.0,
    }
    assert draft["shadow"]["skipped"] == 3 and draft["shadow"]["skip_rate"] == 1.0
    assert draft["shadow"]["answered"] == 0 and draft["shadow"]["latency_p50_ms"] is None


# --- event figures per side ---------------------------------------------------------------


def test_dead_letter_and_parked_rates_per_side() -> None:
    events = [f"e{i}" for i in range(8)]
    live: list[Result] = [output(e, [call("c", "x")]) for e in events[:7]]
    live.append(dead_letter("e7"))
    shadow: list[Result] = [
        *(output(e, [call("c", "x")]) for e in events[:4]),
        dead_letter("e4"),
        dead_letter("e5"),
        parked("e6"),
        parked("e7"),
    ]
    sides = compare(live, shadow)["sides"]
    live_counts = [sides["live"][k] for k in ("outputs", "dead_letters", "parked")]
    assert live_counts == [7, 1, 0]
    assert sides["live"]["dead_letter_rate"] == 0.125 and sides["live"]["parked_rate"] == 0.0
    assert sides["shadow"]["outputs"] == 4
    assert sides["shadow"]["dead_letter_rate"] == 0.25 and sides["shadow"]["parked_rate"] == 0.25


def test_routes_are_counted_per_side() -> None:
    live = [
        output("e1", [call("c", "x")], routes=["escalations"]),
        output("e2", [call("c", "x")], routes=["escalations", "vip"]),
        output("e3", [call("c", "x")]),
    ]
    shadow = [
        output("e1", [call("c", "x")], routes=["vip"]),
        output("e2", [call("c", "x")], routes=["escalations"]),
        output("e3", [call("c", "x")], routes=["escalations"]),
        output("e9", [call("c", "x")], routes=["escalations"]),  # not compared
    ]
    sides = compare(live, shadow)["sides"]
    assert sides["live"]["routes"] == {"escalations": 2, "vip": 1}
    assert sides["shadow"]["routes"] == {"escalations": 2, "vip": 1}
    assert list(sides["live"]["routes"]) == ["escalations", "vip"]


def test_side_cost_and_tokens_come_from_the_outputs_totals() -> None:
    # The retrieval query's embedding is in `totals` but not in `calls`.
    calls = [call("classify", "x", tokens_in=10, tokens_out=5, cost_usd=0.001)]
    with_embedding = Totals(
        model_calls=2, tokens_in=18, tokens_out=5, cost_usd=0.0015, latency_ms=300.0
    )
    live = [output("e1", calls), output("e2", calls)]
    shadow = [output("e1", calls, totals=with_embedding), output("e2", calls)]
    report = compare(live, shadow)
    assert report["sides"]["live"]["cost_usd"] == pytest.approx(0.002)
    assert report["sides"]["live"]["tokens"] == 30
    assert report["sides"]["shadow"]["cost_usd"] == pytest.approx(0.0025)
    assert report["sides"]["shadow"]["tokens"] == 38
    # Per call, the calls' own figures.
    assert report["calls"]["classify"]["shadow"]["cost_usd"] == pytest.approx(0.002)
    assert report["calls"]["classify"]["shadow"]["tokens_in"] == 20


def test_event_latency_percentiles_are_nearest_rank() -> None:
    latencies = [400.0, 100.0, 300.0, 200.0]
    live = [output(f"e{i}", [call("c", "x")], latency_ms=ms) for i, ms in enumerate(latencies)]
    shadow = [
        output(f"e{i}", [call("c", "x")], latency_ms=ms * 2) for i, ms in enumerate(latencies)
    ]
    sides = compare(live, shadow)["sides"]
    assert sides["live"]["latency_p50_ms"] == 200.0 and sides["live"]["latency_p95_ms"] == 400.0
    assert sides["shadow"]["latency_p50_ms"] == 400.0
    assert sides["shadow"]["latency_p95_ms"] == 800.0


def test_call_latency_leaves_reused_answers_out() -> None:
    live_ms = [float(ms) for ms in range(10, 210, 10)]  # 20 calls: 10 .. 200
    live = [output(f"e{i}", [call("c", "x", latency_ms=ms)]) for i, ms in enumerate(live_ms)]
    # Reused answers take no time; were they counted, p50 would fall to 0.
    live += [output(f"r{i}", [call("c", "x", latency_ms=0.0, reused=True)]) for i in range(30)]
    shadow = [output(f"e{i}", [call("c", "x", latency_ms=5.0)]) for i in range(20)]
    shadow += [output(f"r{i}", [call("c", "x", latency_ms=0.0, reused=True)]) for i in range(30)]
    c = compare(live, shadow)["calls"]["c"]
    # Nearest rank: p50 of 20 values is the 10th, p95 the 19th.
    assert c["live"]["latency_p50_ms"] == 100.0
    assert c["live"]["latency_p95_ms"] == 190.0
    assert c["live"]["answered"] == 50
    assert c["shadow"]["latency_p50_ms"] == c["shadow"]["latency_p95_ms"] == 5.0


def test_call_latency_is_none_when_every_answer_was_reused() -> None:
    live = [output("e1", [call("c", "x", reused=True)])]
    c = compare(live, live)["calls"]["c"]
    assert c["live"]["latency_p50_ms"] is None and c["live"]["latency_p95_ms"] is None


# --- events that changed most -------------------------------------------------------------


def test_changed_most_is_ordered_by_change_and_leaves_unchanged_events_out() -> None:
    live = [
        _classify("a", x="1", y="1", z="1", w="1"),
        _classify("b", x="1", y="1", z="1", w="1"),
        _classify("c", x="1", y="1", z="1", w="1"),
        _classify("d", x="1", y="1", z="1", w="1"),
        _classify("e", x="1", y="1", z="1", w="1"),
    ]
    shadow = [
        _classify("a", x="1", y="1", z="1", w="2"),  # 0.25
        _classify("b", x="1", y="1", z="1", w="1"),  # 0
        _classify("c", x="2", y="2", z="2", w="2"),  # 1.0
        _classify("d", x="1", y="1", z="2", w="2"),  # 0.5
        _classify("e", x="1", y="1", z="2", w="2"),  # 0.5: ties go by event
    ]
    changed = compare(live, shadow)["changed_most"]
    assert [(c["event"], c["change"]) for c in changed] == [
        ("id:c@0:0", 1.0),
        ("id:d@0:0", 0.5),
        ("id:e@0:0", 0.5),
        ("id:a@0:0", 0.25),
    ]


def test_changed_most_shows_at_most_a_few_events() -> None:
    n = CHANGED_SHOWN + 5
    live = [output(f"e{i:02}", [call("c", "x")]) for i in range(n)]
    shadow = [output(f"e{i:02}", [call("c", "y")]) for i in range(n)]
    changed = compare(live, shadow)["changed_most"]
    assert len(changed) == CHANGED_SHOWN
    assert changed[0]["event"] == "id:e00@0:0"


def test_an_event_change_is_the_mean_over_its_calls() -> None:
    live = [output("e1", [call("a", "same"), call("b", {"k": "1", "l": "1"}), call("c", "x")])]
    shadow = [output("e1", [call("a", "same"), call("b", {"k": "1", "l": "2"}), call("c", "y")])]
    (changed,) = compare(live, shadow)["changed_most"]
    assert changed["calls"] == {"a": 0.0, "b": 0.5, "c": 1.0}
    assert changed["change"] == 0.5


# --- helpers ------------------------------------------------------------------------------


def test_enum_fields() -> None:
    schema = {
        "type": "object",
        "properties": {
            "priority": {"type": "string", "enum": ["low", "high"]},
            "category": {"enum": ["a", "b"]},
            "reason": {"type": "string"},
            "odd": True,
        },
    }
    assert enum_fields(schema) == {"priority", "category"}
    assert enum_fields(None) == set()
    assert enum_fields({}) == set()
    assert enum_fields({"type": "string", "enum": ["a"]}) == set()
    assert enum_fields({"properties": ["priority"]}) == set()


def test_text_similarity() -> None:
    assert text_similarity("same", "same") == 1.0
    assert text_similarity("", "") == 1.0
    assert text_similarity("abc", "xyz") == 0.0
    a, b = "kitten sitting", "sitting kitten"
    expected = _lcs_ratio(a, b)
    assert 0.0 < text_similarity(a, b) < 1.0
    assert text_similarity(a, b) == pytest.approx(expected, abs=1e-6)
    # Long texts of the same words in another order stay similar (difflib's autojunk
    # dropped the frequent characters past 200 and scored such texts near 0.1).
    words = ["refund", "invoice", "charged", "twice", "login", "broken", "order", "delayed"]
    long_a = " ".join(words[i % 8] for i in range(300))
    long_b = " ".join(words[(i * 3) % 8] for i in range(300))
    assert text_similarity(long_a, long_b) == pytest.approx(_lcs_ratio(long_a, long_b), abs=1e-6)
    assert text_similarity(long_a, long_b) > 0.5


def _lcs_ratio(a: str, b: str) -> float:
    """2 * LCS / (len a + len b), by the textbook dynamic programme."""
    previous = [0] * (len(b) + 1)
    for x in a:
        row = [0]
        for j, y in enumerate(b):
            row.append(previous[j] + 1 if x == y else max(previous[j + 1], row[j]))
        previous = row
    return 2 * previous[-1] / (len(a) + len(b)) if a or b else 1.0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], 1.0),
        ([1.0, 0.0], [0.0, 1.0], 0.0),
        ([1.0, 0.0], [-1.0, 0.0], -1.0),
        ([3.0, 4.0], [4.0, 3.0], 0.96),
        ([1.0, 0.0], [1.0, 0.0, 0.0], 0.0),
        ([0.0, 0.0], [1.0, 1.0], 0.0),
    ],
)
def test_cosine(a: list[float], b: list[float], expected: float) -> None:
    assert cosine(a, b) == pytest.approx(expected, abs=1e-6)


def test_enum_fields_of_a_real_topology() -> None:
    topology = load_topology(TOPOLOGY)
    enums = {c.name: enum_fields(c.output_schema) for c in topology.calls}
    assert enums == {
        "classify": {"category", "priority", "sentiment"},
        "summarize": set(),
        "draft_reply": set(),
    }


def test_compare_topics_keeps_only_the_live_results_of_shadowed_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from collections.abc import Iterator

    from llmflow.services.shadow import compare as compare_module
    from llmflow.services.shadow.reading import Stored, Unreadable
    from llmflow.services.worker.settings import Settings
    from llmflow.topologies.loader import load_topology
    from tests.unit.shadow.helpers import TOPOLOGY

    topics: dict[str, list[Any]] = {
        "live": [
            output(f"e{n}", [call("summarize", f"old {n}")], version="2.0.1", offset=n)
            for n in range(50)
        ],
        "shadow": [
            output(f"e{n}", [call("summarize", f"new {n}")], version="2.1.0", offset=n)
            for n in (3, 7, 99)
        ],
    }
    stores: list[dict[str, bytes]] = []

    class Kept(Stored):
        def __init__(self) -> None:
            super().__init__()
            stores.append(self._data)

    def fake_read(
        servers: str, names: list[str], unreadable: Unreadable | None = None
    ) -> Iterator[tuple[Any, bytes]]:
        for result in topics[names[0]]:
            yield result, result.model_dump_json().encode()

    monkeypatch.setattr(compare_module, "read_with_bytes", fake_read)
    monkeypatch.setattr(compare_module, "Stored", Kept)
    # The helpers' outputs are topology "t"; the candidate is v2.1.0 of it. A result of
    # another version in the shadow topic is left out and counted.
    candidate = load_topology(TOPOLOGY).model_copy(update={"name": "t", "version": "2.1.0"})
    topics["shadow"].append(output("e5", [call("summarize", "other")], version="9", offset=5))
    report = compare_module.compare_topics(
        Settings(), candidate, shadow_topic="shadow", live_topics=["live"]
    )
    assert report["head"]["other_versions_in_shadow_topic"] == {"t v9": 1}
    assert report["head"]["live_records_read"] == 50
    assert report["head"]["live_version"] == "2.0.1"
    assert report["events"]["compared"] == 2 and report["events"]["only_in_shadow"] == 1
    # Never the 50 live results: only those of the shadowed events, kept as bytes.
    assert [len(kept) for kept in stores] == [3, 2]
    assert report["calls"]["summarize"]["pairs"] == 2
