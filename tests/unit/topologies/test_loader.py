from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, RootModel

from llmflow.services.cli import main
from llmflow.topologies import TopologyError, load_topology

VALID = """\
name: demo
version: "1"
input_topic: in
output_topic: out
dead_letter_topic: dlq
accepts: [text]
calls:
  - name: summarize
    model: m
    prompt:
      version: p1
      user: "{{ event.text }}"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


def test_shipped_topologies_are_valid(project_root: Path) -> None:
    shipped = (project_root / "topologies").glob("*.yaml")
    names = {load_topology(p).name for p in shipped if p.name != "collections.yaml"}
    assert names == {"support_triage", "product_images"}


def test_valid_minimal_topology(tmp_path: Path) -> None:
    topology = load_topology(_write(tmp_path, VALID))
    assert topology.calls[0].kind == "chat" and topology.enrichment is None


def test_error_points_at_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("    model: m\n", "    model: m\n    temperature: 9\n"))
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert info.value.problems == [
        f"{path}:10:18: calls.0.temperature: Input should be less than or equal to 2"
    ]


def test_missing_field_points_at_its_parent(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("      version: p1\n", ""))
    with pytest.raises(TopologyError, match=r"t.yaml:11:7: calls.0.prompt.version: Field required"):
        load_topology(path)


def test_template_syntax_error_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("{{ event.text }}", "{{ event.text "))
    with pytest.raises(TopologyError, match=r"t.yaml:12:13: calls.0.prompt.user: .*template error"):
        load_topology(path)


def test_duplicate_call_names(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID + VALID.split("calls:\n")[1])
    with pytest.raises(TopologyError, match="call names must be unique; repeated: summarize"):
        load_topology(path)


def test_topics_must_differ(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("output_topic: out", "output_topic: in"))
    with pytest.raises(TopologyError, match="must differ"):
        load_topology(path)


def test_yaml_syntax_error_has_location(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: [unclosed\n")
    with pytest.raises(TopologyError, match=r"t.yaml:2:1: YAML error"):
        load_topology(path)


def test_vision_needs_images(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("    model: m", "    kind: vision\n    model: m"))
    with pytest.raises(TopologyError, match="vision call needs images"):
        load_topology(path)


class Triage(BaseModel):
    """Used by the output_model test below."""

    category: Literal["billing", "bug"]
    urgent: bool


def test_output_model_gives_the_schema(tmp_path: Path) -> None:
    where = "tests.unit.topologies.test_loader:Triage"
    path = _write(
        tmp_path, VALID.replace("    model: m\n", f"    model: m\n    output_model: {where}\n")
    )
    schema = load_topology(path).calls[0].output_schema
    assert schema is not None
    assert schema["properties"]["category"]["enum"] == ["billing", "bug"]
    assert schema["required"] == ["category", "urgent"]


def test_output_model_must_import(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        VALID.replace("    model: m\n", "    model: m\n    output_model: nowhere.at:All\n"),
    )
    with pytest.raises(TopologyError, match=r"cannot import output_model 'nowhere\.at:All'"):
        load_topology(path)


def test_invalid_output_schema_points_at_the_keyword(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = (
        "    output_schema:\n"
        "      type: object\n"
        "      properties:\n"
        '        name: {type: string, minLength: "x"}\n'
    )
    path = _write(tmp_path, VALID + schema)
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    expected = (
        f"{path}:16:41: calls.0.output_schema.properties.name.minLength: "
        "not a valid JSON Schema (2020-12): 'x' is not of type 'integer'"
    )
    assert info.value.problems == [expected]
    # `llmflow topology validate` prints the same line.
    assert main(["topology", "validate", str(path)]) == 1
    assert expected in capsys.readouterr().err


class Scores(RootModel[list[int]]):
    """Not an object: cannot be an output schema."""


def test_output_model_must_describe_an_object(tmp_path: Path) -> None:
    where = "tests.unit.topologies.test_loader:Scores"
    path = _write(
        tmp_path, VALID.replace("    model: m\n", f"    model: m\n    output_model: {where}\n")
    )
    with pytest.raises(TopologyError, match=r"t.yaml:8:5: calls.0: .*Scores must describe a JSON"):
        load_topology(path)
