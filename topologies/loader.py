"""Load topology YAML and report every error with its line and column in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmflow.errors import ConfigError
from llmflow.topologies.spec import WITHIN, Topology


class TopologyError(ConfigError):
    """A topology file is invalid; `problems` lists `file:line:col: message` strings."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


def _node_at(root: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """The deepest YAML node along a pydantic error location."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == part), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
        else:
            break
    return node


def load_topology(path: str | Path) -> Topology:
    """Parse and validate one topology file (and its shadow's candidate, if it names one)."""
    path = Path(path)
    topology, root = _load(path)
    if topology.shadow is None:
        return topology
    mark = _node_at(root, ("shadow", "topology")).start_mark
    where = f"{path}:{mark.line + 1}:{mark.column + 1}: shadow.topology"
    candidate_path = path.parent / topology.shadow.topology
    try:
        candidate, _ = _load(candidate_path)
    except TopologyError as exc:
        raise TopologyError(path, [f"{where}: the candidate is invalid", *exc.problems]) from exc
    problem = None
    if candidate.name != topology.name or candidate.input_topic != topology.input_topic:
        problem = "the candidate must have the same name and input topic"
    elif candidate.shadow is not None:
        problem = "the candidate must not name a shadow of its own"
    elif candidate.version == topology.version:
        problem = f"the candidate has this topology's version {topology.version!r}"
    elif (topology.shadow.topic or "") in topology.topics:
        problem = f"shadow.topic {topology.shadow.topic!r} is one of the live topics"
    if problem:
        raise TopologyError(path, [f"{where}: {candidate_path}: {problem}"])
    return topology.with_candidate(candidate)


def _load(path: Path) -> tuple[Topology, yaml.Node]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopologyError(path, [f"{path}: cannot read: {exc.strerror}"]) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise TopologyError(path, [f"{where}: YAML error: {exc.problem}"]) from exc
    if root is None or not isinstance(data, dict):
        raise TopologyError(path, [f"{path}:1:1: a topology file must be a YAML mapping"])
    try:
        return Topology.model_validate(data), root
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            # An error inside a field's value (a schema keyword) says where: follow it there.
            loc = (*error["loc"], *error.get("ctx", {}).get(WITHIN, ()))
            mark = _node_at(root, loc).start_mark
            dotted = ".".join(str(part) for part in loc) or "(top level)"
            problems.append(f"{path}:{mark.line + 1}:{mark.column + 1}: {dotted}: {error['msg']}")
        raise TopologyError(path, problems) from exc
