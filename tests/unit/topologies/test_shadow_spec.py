"""`shadow:` names a candidate the worker runs beside the live version: the loader reads it
relative to the topology's file and refuses candidates that could not shadow it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmflow.topologies.loader import TopologyError, load_topology

TOPOLOGIES = Path(__file__).resolve().parents[3] / "topologies"


def _write(
    folder: Path, shadow: dict[str, object], candidate: dict[str, object] | None = None
) -> Path:
    """support_triage with `shadow`, and its candidate (changed by `candidate`) beside it."""
    live = yaml.safe_load((TOPOLOGIES / "support_triage.yaml").read_text())
    spec = yaml.safe_load((TOPOLOGIES / "candidates" / "support_triage.yaml").read_text())
    (folder / "candidates").mkdir(exist_ok=True)
    (folder / "candidates" / "c.yaml").write_text(yaml.safe_dump(spec | (candidate or {})))
    path = folder / "live.yaml"
    path.write_text(yaml.safe_dump(live | {"shadow": shadow}, sort_keys=False))
    return path


def test_the_candidate_is_read_relative_to_the_topology(tmp_path: Path) -> None:
    path = _write(tmp_path, {"topology": "candidates/c.yaml", "share": 0.05, "budget_usd": 2})
    topology = load_topology(path)
    assert topology.shadow is not None and topology.shadow.share == 0.05
    assert topology.candidate is not None and topology.candidate.version == "2.1.0"
    assert topology.candidate.shadow_output_topic == "support.triaged.shadow.2.1.0"
    assert load_topology(TOPOLOGIES / "support_triage.yaml").candidate is None


@pytest.mark.parametrize(
    ("shadow", "candidate", "problem"),
    [
        ({"share": 0.1}, {"name": "other"}, "same name and input topic"),
        ({"share": 0.1}, {"input_topic": "elsewhere"}, "same name and input topic"),
        ({"share": 0.1}, {"version": "2.0.1"}, "this topology's version"),
        (
            {"share": 0.1},
            {"shadow": {"topology": "x.yaml", "share": 1}},
            "must not name a shadow of its own",
        ),
        ({"share": 0.1, "topic": "support.triaged"}, {}, "one of the live topics"),
    ],
)
def test_a_candidate_that_cannot_shadow_is_refused_where_it_is_named(
    tmp_path: Path, shadow: dict[str, object], candidate: dict[str, object], problem: str
) -> None:
    path = _write(tmp_path, {"topology": "candidates/c.yaml", **shadow}, candidate)
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    line = next(
        n for n, text in enumerate(path.read_text().splitlines(), 1) if "candidates/c.yaml" in text
    )
    assert caught.value.problems[0].startswith(f"{path}:{line}:")
    assert "shadow.topology" in caught.value.problems[0]
    assert problem in caught.value.problems[0]


def test_a_missing_or_broken_candidate_says_so(tmp_path: Path) -> None:
    path = _write(tmp_path, {"topology": "candidates/none.yaml", "share": 0.5})
    with pytest.raises(TopologyError, match="the candidate is invalid") as caught:
        load_topology(path)
    assert "cannot read" in caught.value.problems[1]
    path = _write(tmp_path, {"topology": "candidates/c.yaml", "share": 0.5}, {"calls": []})
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert "calls" in caught.value.problems[1]


@pytest.mark.parametrize("share", [0, -0.1, 1.5])
def test_the_share_lies_in_zero_to_one(tmp_path: Path, share: float) -> None:
    with pytest.raises(TopologyError, match=r"shadow\.share"):
        load_topology(_write(tmp_path, {"topology": "candidates/c.yaml", "share": share}))
