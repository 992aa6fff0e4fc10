"""The command line and the deployment files agree with each other."""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from llmflow.services.cli import build_parser, main


def test_compose_commands_are_valid_llmflow_commands(project_root: Path) -> None:
    compose = yaml.safe_load((project_root / "docker-compose.yml").read_text())
    parser = build_parser()
    commands = [s["command"] for s in compose["services"].values() if "command" in s]
    assert len(commands) == 3
    for command in commands:
        args = parser.parse_args(command)
        for topology in getattr(args, "topology", None) or []:
            assert (project_root / topology).is_file(), topology
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:4.")


def test_dockerfile_copies_what_exists(project_root: Path) -> None:
    dockerfile = (project_root / "deploy" / "docker" / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert (project_root / source).exists(), source


def test_maven_file_pins_kafka_4(project_root: Path) -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(project_root / "deploy" / "kafka" / "pom.xml").getroot()
    version = pom.find("m:properties/m:kafka.version", ns)
    assert version is not None and version.text is not None
    assert version.text.startswith("4.")
    artifacts = [a.text for a in pom.findall("m:dependencies/m:dependency/m:artifactId", ns)]
    assert "kafka_2.13" in artifacts


def test_topology_validate_reports_ok_and_errors(
    project_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = str(project_root / "topologies" / "support_triage.yaml")
    assert main(["topology", "validate", good]) == 0
    assert "ok - support_triage v1.0.0" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\n")
    assert main(["topology", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:1:7: name: String should match pattern" in err
    assert f"{bad}:1:1: version: Field required" in err


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("kafka", "modelsim", "topology", "worker", "orgdata", "produce", "consume"):
        assert command in out
