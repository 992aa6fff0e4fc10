"""Copies of the shipped topologies with topics unique to one run, so that runs sharing a
broker (tests, demo reruns, benchmark scenarios) never see each other's events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dev import PROJECT_ROOT
from llmflow.errors import LlmflowError
from llmflow.topologies.loader import load_topology
from llmflow.topologies.spec import Topology

SHIPPED = PROJECT_ROOT / "topologies"


@dataclass(frozen=True)
class TopologyCopy:
    """A copy written for one run: its file and what it declares."""

    path: Path
    topology: Topology


def copy_topology(
    name: str, folder: Path, suffix: str, *, keep: Sequence[str] = (), independent: bool = False
) -> TopologyCopy:
    """Write `topologies/<name>.yaml` to `folder/<name>.yaml` with `.<suffix>` added to all
    of its topics (input, output, dead letter, parked, routes); with `keep`, only the named
    calls stay, and no retrieval step (its query embedding is a call of its own) nor
    routes. With `independent`, no call needs another (a prompt that reads other calls'
    answers asks about the event's text instead), so all of an event's calls run at once:
    a fan-out, not a graph. The parked topic is written out explicitly: left to its default
    (`<input_topic>.parked`) it would be unique too, but only by the accident of naming."""
    shipped = load_topology(SHIPPED / f"{name}.yaml")
    spec: dict[str, Any] = yaml.safe_load((SHIPPED / f"{name}.yaml").read_text())
    spec |= {
        "input_topic": f"{shipped.input_topic}.{suffix}",
        "output_topic": f"{shipped.output_topic}.{suffix}",
        "dead_letter_topic": f"{shipped.dead_letter_topic}.{suffix}",
        "parked_topic": f"{shipped.parked}.{suffix}",
    }
    for route in spec.get("routes", []):
        route["topic"] = f"{route['topic']}.{suffix}"
    if keep:
        spec.pop("retrieval", None)
        spec.pop("routes", None)  # their conditions may name calls left out
        spec["calls"] = [call for call in spec["calls"] if call["name"] in keep]
        if len(spec["calls"]) != len(set(keep)):
            raise LlmflowError(f"{name} has no call among {sorted(keep)}")
    if independent:
        for call in spec["calls"]:
            call.pop("needs", None)
            if "calls." in call["prompt"]["user"]:
                call["prompt"]["user"] = "{{ event.text }}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return TopologyCopy(path, load_topology(path))


CANDIDATES = SHIPPED / "candidates"
_TOPICS = ("input_topic", "output_topic", "dead_letter_topic", "parked_topic", "routes")


def candidate_copy(
    live: Path, folder: Path, candidate: Path | None = None, **changes: Any
) -> TopologyCopy:
    """A candidate for the topology copy `live`, reading and writing that copy's topics:
    `candidate` (default `topologies/candidates/<name>.yaml`) with `changes` applied on top
    (`version="2.0.1"`, or `classify={"prompt": {...}}` to replace a call's fields)."""
    spec: dict[str, Any] = yaml.safe_load(live.read_text())
    source = candidate or CANDIDATES / f"{spec['name']}.yaml"
    wanted: dict[str, Any] = yaml.safe_load(source.read_text())
    wanted |= {key: spec[key] for key in _TOPICS if key in spec}
    calls = {call["name"]: call for call in wanted["calls"]}
    for key, value in changes.items():
        if key in calls:
            calls[key] |= value
        else:
            wanted[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec['name']}-{wanted['version']}.yaml"
    path.write_text(yaml.safe_dump(wanted, sort_keys=False))
    return TopologyCopy(path, load_topology(path))


def _call(name: str, user: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": "gpt-4o-mini", "prompt": {"version": "1", "user": user}, **extra}


GRAPH_CALLS: list[dict[str, Any]] = [
    _call(
        "classify",
        "{{ event.text }}",
        output_schema={
            "type": "object",
            "required": ["priority"],
            "properties": {"priority": {"type": "string", "enum": ["low", "high"]}},
        },
    ),
    _call(
        "summarize", "{{ event.text }} ({{ calls.classify.answer.priority }})", needs=["classify"]
    ),
    _call("extract", "order number in: {{ event.text }}", needs=["classify"]),
    _call(
        "reply",
        "{{ calls.summarize.answer }} / {{ calls.extract.answer }}",
        needs=["summarize", "extract"],
    ),
]
"""A graph of four calls: classify; then summarize and extract at once; then a reply that
uses both. Three calls on its critical path."""


def as_graph(path: Path) -> dict[str, Any]:
    """Rewrite a topology copy to run `GRAPH_CALLS`, without retrieval (its query embedding
    would be a fifth call on every path) nor routes; returns the spec."""
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    spec.pop("retrieval", None)
    spec.pop("routes", None)
    spec["calls"] = GRAPH_CALLS
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


def critical_path_ms(latencies: dict[str, float]) -> float:
    """The longest chain of `GRAPH_CALLS`, by the latencies its calls took."""
    return (
        latencies["classify"]
        + max(latencies["summarize"], latencies["extract"])
        + latencies["reply"]
    )
