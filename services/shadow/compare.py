"""`llmflow compare`: live and shadow results of the same events, side by side.

Results are joined by the input record they answer (partition and offset of the live input
topic, which a replay and a shadow read too; the event id is shown). Only events in both are
compared: the shadow holds the replayed range, the live topics everything. Per call it
reports, for each side, how often it answered and was skipped, tokens, cost and latency
(p50/p95 of the calls made, reused answers left out); and for the events both sides
answered: per field of a structured answer the share that agrees (with a confusion table
for fields of few values), for free text the similarity of the two texts (twice their
longest common subsequence over their total length, 1.0 when equal), and for vectors their
cosine. Events: dead-letter, parked and route rates
per side, and the events whose answers changed most.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz.distance import Indel

from llmflow.schemas.outputs import ModelCallResult, Output
from llmflow.services.sdk.consumer import Result
from llmflow.services.shadow.reading import Stored, Unreadable, read_with_bytes
from llmflow.services.worker.settings import Settings
from llmflow.topologies.spec import Topology

ENUM_MAX_VALUES = 12
"""A string field with at most this many values (both sides together) gets a confusion
table, unless the candidate's output schema says which fields are enums."""
TEXT_MAX_CHARS = 20_000
"""Texts are compared on their first characters only (the LCS is quadratic, bit-parallel)."""
CHANGED_SHOWN = 10


@dataclass(slots=True)
class Side:
    """One call's figures on one side."""

    answered: int = 0
    skipped: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, call: ModelCallResult) -> None:
        self.answered += 1
        self.tokens_in += call.tokens_in
        self.tokens_out += call.tokens_out
        self.cost_usd += call.cost_usd
        if not call.reused:
            self.latencies_ms.append(call.latency_ms)

    def summary(self, outputs: int) -> dict[str, Any]:
        return {
            "answered": self.answered,
            "skipped": self.skipped,
            "skip_rate": _rate(self.skipped, outputs),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost_usd": round(self.cost_usd, 9),
            "latency_p50_ms": _percentile(self.latencies_ms, 50),
            "latency_p95_ms": _percentile(self.latencies_ms, 95),
        }


@dataclass(slots=True)
class CallComparison:
    name: str
    live: Side = field(default_factory=Side)
    shadow: Side = field(default_factory=Side)
    pairs: int = 0
    """Events both sides answered this call for."""
    field_agree: Counter[str] = field(default_factory=Counter)
    field_seen: Counter[str] = field(default_factory=Counter)
    confusion: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)
    similarities: list[float] = field(default_factory=list)
    """Per pair, for text and vector answers."""
    exact: int = 0
    """Pairs whose answers are equal."""

    def summary(self, live_outputs: int, shadow_outputs: int, enums: set[str]) -> dict[str, Any]:
        fields = {
            name: round(self.field_agree[name] / seen, 6)
            for name, seen in sorted(self.field_seen.items())
        }
        confusion = {
            name: _table(counts)
            for name, counts in sorted(self.confusion.items())
            if name in enums
            or (not enums and len({v for pair in counts for v in pair}) <= ENUM_MAX_VALUES)
        }
        return {
            "pairs": self.pairs,
            "exact_match": _rate(self.exact, self.pairs),
            "field_agreement": fields,
            "confusion": confusion,
            "similarity_mean": _mean(self.similarities),
            "similarity_min": min(self.similarities) if self.similarities else None,
            "live": self.live.summary(live_outputs),
            "shadow": self.shadow.summary(shadow_outputs),
        }


@dataclass(frozen=True, slots=True)
class Changed:
    """An event and how much its answers changed (0 same, 1 all different)."""

    event: str
    change: float
    calls: dict[str, float]


def compare(
    live: Iterable[Result] | Mapping[str, Result],
    shadow: Iterable[Result] | Mapping[str, Result],
    *,
    enums: Mapping[str, set[str]] | None = None,
) -> dict[str, Any]:
    """The report's figures (JSON-ready) for the results of both sides. `enums`: per call,
    the fields the candidate declares as enums (None: guess from the values). Given as
    mappings, the results are taken as keyed by `_event_key` and looked up one event at a
    time (`reading.Stored` parses them then)."""
    live_by = live if isinstance(live, Mapping) else _last_by_event(live)
    shadow_by = shadow if isinstance(shadow, Mapping) else _last_by_event(shadow)
    events = [key for key in shadow_by if key in live_by]
    calls: dict[str, CallComparison] = {}
    changed: list[Changed] = []
    counts = {"live": Counter[str](), "shadow": Counter[str]()}
    latencies: dict[str, list[float]] = {"live": [], "shadow": []}
    routes = {"live": Counter[str](), "shadow": Counter[str]()}
    # Every call of an output, the retrieval query's embedding too.
    totals = {side: {"cost_usd": 0.0, "tokens": 0.0} for side in ("live", "shadow")}
    for key in events:
        pair = {"live": live_by[key], "shadow": shadow_by[key]}
        for side, result in pair.items():
            counts[side][result.record_type] += 1
            if isinstance(result, Output):
                latencies[side].append(result.totals.latency_ms)
                totals[side]["cost_usd"] += result.totals.cost_usd
                totals[side]["tokens"] += result.totals.tokens_in + result.totals.tokens_out
                routes[side].update(result.routes)
                for call in result.calls:
                    getattr(calls.setdefault(call.name, CallComparison(call.name)), side).add(call)
                for skipped in result.skipped:
                    comparison = calls.setdefault(skipped.name, CallComparison(skipped.name))
                    getattr(comparison, side).skipped += 1
        left, right = pair["live"], pair["shadow"]
        if isinstance(left, Output) and isinstance(right, Output):
            changes = _compare_calls(left, right, calls)
            if changes:
                changed.append(Changed(key, _mean(list(changes.values())) or 0.0, changes))
    outputs = {side: counts[side]["output"] for side in counts}
    changed.sort(key=lambda c: (-c.change, c.event))
    return {
        "events": {
            "live_results": len(live_by),
            "shadow_results": len(shadow_by),
            "compared": len(events),
            "only_in_shadow": len(shadow_by) - len(events),
        },
        "sides": {
            side: {
                "outputs": counts[side]["output"],
                "dead_letters": counts[side]["dead_letter"],
                "parked": counts[side]["parked"],
                "dead_letter_rate": _rate(counts[side]["dead_letter"], len(events)),
                "parked_rate": _rate(counts[side]["parked"], len(events)),
                "routes": dict(sorted(routes[side].items())),
                "latency_p50_ms": _percentile(latencies[side], 50),
                "latency_p95_ms": _percentile(latencies[side], 95),
                "cost_usd": round(totals[side]["cost_usd"], 9),
                "tokens": int(totals[side]["tokens"]),
            }
            for side in ("live", "shadow")
        },
        "calls": {
            name: c.summary(outputs["live"], outputs["shadow"], (enums or {}).get(name, set()))
            for name, c in sorted(calls.items())
        },
        "changed_most": [
            {"event": c.event, "change": round(c.change, 6), "calls": c.calls}
            for c in changed[:CHANGED_SHOWN]
            if c.change > 0
        ],
    }


def enum_fields(output_schema: Mapping[str, Any] | None) -> set[str]:
    """Top-level properties of an object schema that declare an `enum`."""
    if not output_schema:
        return set()
    properties = output_schema.get("properties")
    if not isinstance(properties, Mapping):
        return set()
    return {name for name, sub in properties.items() if isinstance(sub, Mapping) and "enum" in sub}


def _last_by_event(results: Iterable[Result]) -> dict[str, Result]:
    """The last result of each event (a redelivered event may have several)."""
    by: dict[str, Result] = {}
    for result in results:
        by[_event_key(result)] = result
    return by


def _event_key(result: Result) -> str:
    """The input record a result answers: both sides read the same input topic, so its
    partition and offset name it exactly (two records may carry the same event id), with
    the event id, when there is one, to show."""
    where = f"{result.source_partition}:{result.source_offset}"
    return f"id:{result.event_id}@{where}" if result.event_id is not None else f"at:{where}"


def _compare_calls(
    live: Output, shadow: Output, calls: dict[str, CallComparison]
) -> dict[str, float]:
    """Add one event's pairs of answers to `calls`; returns each call's change (1 - its
    agreement or similarity). A call only one side answered counts as changed entirely."""
    changes: dict[str, float] = {}
    theirs = {call.name: call for call in shadow.calls}
    ours = {call.name: call for call in live.calls}
    for name in sorted(set(ours) | set(theirs)):
        a, b = ours.get(name), theirs.get(name)
        if a is None or b is None:
            changes[name] = 1.0
            continue
        comparison = calls[name]
        comparison.pairs += 1
        comparison.exact += a.answer == b.answer
        changes[name] = 1.0 - _agreement(a.answer, b.answer, comparison)
    return changes


def _agreement(a: Any, b: Any, comparison: CallComparison) -> float:
    if isinstance(a, dict) and isinstance(b, dict):
        names = sorted(set(a) | set(b))
        agree = 0
        for name in names:
            x, y = a.get(name), b.get(name)
            comparison.field_seen[name] += 1
            if x == y:
                comparison.field_agree[name] += 1
                agree += 1
            if isinstance(x, str | None) and isinstance(y, str | None):
                table = comparison.confusion.setdefault(name, Counter())
                table[_label(x), _label(y)] += 1
        return agree / len(names) if names else 1.0
    if isinstance(a, str) and isinstance(b, str):
        similarity = text_similarity(a, b)
    elif _is_vector(a) and _is_vector(b):
        similarity = cosine(a, b)
    else:
        similarity = 1.0 if a == b else 0.0
    comparison.similarities.append(similarity)
    return similarity


def text_similarity(a: str, b: str) -> float:
    """2 * (longest common subsequence) / (sum of the lengths): 1.0 equal, 0.0 nothing in
    common. rapidfuzz computes it exactly, in C++, about 40 times faster than difflib's
    ratio, which besides is no LCS, and past 200 characters ignores frequent characters
    (its autojunk): two texts of the same words in another order scored 0.09 there."""
    if a == b:
        return 1.0
    return round(Indel.normalized_similarity(a[:TEXT_MAX_CHARS], b[:TEXT_MAX_CHARS]), 6)


def cosine(a: list[float], b: list[float]) -> float:
    if a == b:
        return 1.0  # the same vector, even one without a direction (empty, all zeros)
    if len(a) != len(b):
        return 0.0
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return round(sum(x * y for x, y in zip(a, b, strict=True)) / norms, 6) if norms else 0.0


def _is_vector(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int | float) for x in value)


def _label(value: str | None) -> str:
    return "(missing)" if value is None else value


def _table(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """live value -> shadow value -> events."""
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for (live, shadow), n in sorted(counts.items()):
        table[live][shadow] = n
    return dict(table)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 6) if values else None


def _percentile(values: list[float], q: int) -> float | None:
    """Nearest-rank percentile: a value that was measured, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)], 3)


@dataclass(frozen=True, slots=True)
class JudgeOptions:
    model: str
    rubric: str
    """The rubric's text: the judge's system prompt."""
    endpoint: str = "default"
    limit: int = 50
    """Pairs scored at most (the first ones by event id)."""


def compare_topics(
    settings: Settings,
    candidate: Topology,
    *,
    shadow_topic: str,
    live_topics: list[str],
    judge_with: JudgeOptions | None = None,
) -> dict[str, Any]:
    """Read both sides from Kafka and compare them (the `llmflow compare` report)."""
    servers = settings.kafka_bootstrap_servers
    unreadable = Unreadable()
    # The shadow first: only the live results of its events are kept, so memory follows
    # the replayed range, not the live topics' whole history.
    others = Counter[str]()
    shadow = Stored()  # the last result of each event, as bytes: parsed when compared
    for result, raw in read_with_bytes(servers, [shadow_topic], unreadable):
        # A shadow topic may be shared (a fixed `shadow.topic`): this version's only.
        if (result.topology, result.topology_version) == (candidate.name, candidate.version):
            shadow[_event_key(result)] = raw
        else:
            others[f"{result.topology} v{result.topology_version}"] += 1
    live = Stored()
    read = Counter[str]()
    versions = Counter[str]()
    for result, raw in read_with_bytes(servers, live_topics, unreadable):
        read["live"] += 1
        key = _event_key(result)
        if key in shadow:
            live[key] = raw
            if isinstance(result, Output):
                versions[result.topology_version] += 1
    enums = {call.name: enum_fields(call.output_schema) for call in candidate.calls}
    report = compare(live, shadow, enums=enums)
    report = {
        "head": {
            "topology": candidate.name,
            "live_version": versions.most_common(1)[0][0] if versions else "?",
            "shadow_version": candidate.version,
            "live_topics": live_topics,
            "shadow_topic": shadow_topic,
            "live_records_read": read["live"],
            "other_versions_in_shadow_topic": dict(others),
            "unreadable_records": unreadable.count,
        },
        **report,
    }
    if judge_with is not None:
        report["judge"] = asyncio.run(_judge(settings, live, shadow, judge_with))
    return report


async def _judge(
    settings: Settings,
    live: Mapping[str, Result],
    shadow: Mapping[str, Result],
    options: JudgeOptions,
) -> dict[str, Any]:
    from llmflow.services.shadow.judge import judge, judge_call, pairs
    from llmflow.services.worker.bootstrap import model_client

    found = []
    for key in sorted(set(live) & set(shadow)):  # in event order, one event at a time
        ours, theirs = live[key], shadow[key]
        if isinstance(ours, Output) and isinstance(theirs, Output):
            names = {c.name for c in theirs.calls if c.kind != "embedding"}
            found += pairs({key: ours}, {key: theirs}, names)
        if len(found) >= options.limit:
            break
    models = model_client(settings.models_config())
    try:
        call = judge_call(options.model, options.endpoint, options.rubric)
        return await judge(models, call, options.rubric, found[: options.limit])
    finally:
        await models.close()
