"""The command line and the deployment files agree with each other."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llmflow.services import modelsim
from llmflow.services.cli import build_parser, main
from llmflow.services.modelsim import cli as modelsim_cli

# The image's ENTRYPOINT is `llmflow`; a service that runs another command sets `entrypoint`.
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "llmflow": build_parser,
    "llmflow-modelsim": modelsim_cli.build_parser,
}


def test_compose_commands_are_valid_for_their_entry_points(project_root: Path) -> None:
    compose = yaml.safe_load((project_root / "docker-compose.yml").read_text())
    services = {name: s for name, s in compose["services"].items() if "command" in s}
    assert len(services) == 3
    entry_points = {name: s.get("entrypoint", ["llmflow"]) for name, s in services.items()}
    assert entry_points["modelsim"] == ["llmflow-modelsim"]
    for name, service in services.items():
        (entry_point,) = entry_points[name]
        args = PARSERS[entry_point]().parse_args(service["command"])
        for topology in getattr(args, "topology", None) or []:
            assert (project_root / topology).is_file(), topology
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:4.")


def test_entry_points_are_declared(project_root: Path) -> None:
    pyproject = tomllib.loads((project_root / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert scripts == {
        "llmflow": "llmflow.services.cli:main",
        "llmflow-modelsim": "llmflow.services.modelsim.cli:main",
    }
    assert set(scripts) == set(PARSERS)


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
    assert "ok - support_triage v2.0.1" in capsys.readouterr().out
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
    for command in ("kafka", "topology", "worker", "orgdata", "produce", "consume", "schemas"):
        assert command in out
    # The simulator has its own command; the demo runs from a checkout (`make demo`).
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    assert commands.choices is not None
    assert "modelsim" not in commands.choices and "demo" not in commands.choices


def test_modelsim_help_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        modelsim_cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llmflow-modelsim")
    for flag in ("--host", "--port", "--latency-ms", "--rate-429", "--require-api-key"):
        assert flag in out


def test_modelsim_flags_become_its_config() -> None:
    args = modelsim_cli.build_parser().parse_args(["--port", "9", "--rate-429", "0.25"])
    config = modelsim_cli.config_from(args)
    assert args.port == 9 and config.rate_429 == 0.25
    assert config.latency_ms == modelsim.SimulatorConfig().latency_ms  # not given: default


def test_modelsim_rejects_an_invalid_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        modelsim_cli.main(["--rate-429", "2"])
    assert exit_.value.code == 2
    assert "rate_429" in capsys.readouterr().err


def test_modelsim_runs_as_a_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m llmflow.services.modelsim`, as the demo and the tests start it."""
    monkeypatch.setattr(sys, "argv", ["modelsim", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("llmflow.services.modelsim", run_name="__main__")
    assert exit_.value.code == 0
    assert "--latency-ms" in capsys.readouterr().out


def test_modelsim_is_an_installed_command() -> None:
    script = Path(sys.executable).parent / "llmflow-modelsim"
    assert script.is_file(), "reinstall: pip install -c constraints.txt -e '.[dev]'"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--latency-ms" in done.stdout


def test_make_help_lists_every_target(project_root: Path) -> None:
    makefile = (project_root / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z-]*):", makefile, re.M)
    documented = re.findall(r"^([a-z][a-z-]*):.*## ", makefile, re.M)
    phony = re.search(r"^\.PHONY: (.*)$", makefile, re.M)
    assert phony is not None
    assert targets == documented and set(targets) == set(phony.group(1).split())
    assert "python -m dev.demo" in makefile and "python -m dev.bench.run" in makefile


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--offsets", "0-", "--from", "2026-11-20T00:00Z"], "not both"),
        (["--offsets", "0:9-3"], "the end comes before the start"),
        (["--offsets", "a-b"], "write PARTITION:FIRST-LAST"),
        (["--from", "yesterday"], "write it as ISO 8601"),
        (["--from", "2026-11-21T00:00Z", "--to", "2026-11-20T00:00Z"], "is not before --to"),
        (["--offsets", ""], "offsets: nothing given"),
    ],
)
def test_replay_refuses_a_range_it_cannot_read_before_touching_kafka(
    project_root: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    candidate = str(project_root / "topologies" / "candidates" / "support_triage.yaml")
    assert main(["replay", "--topology", candidate, *args]) == 2
    assert message in capsys.readouterr().err


def test_compare_wants_a_judge_and_its_rubric_together(
    project_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = str(project_root / "topologies" / "candidates" / "support_triage.yaml")
    assert main(["compare", "--topology", candidate, "--judge-model", "gpt-4o"]) == 2
    assert "--judge-model and --rubric go together" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--concurrency", "0"],
        ["--concurrency", "-1"],
        ["--quota-share", "0"],
        ["--quota-share", "5"],
        ["--max-usd", "0"],
        ["--max-usd", "-1"],
        ["--max-usd", "nan"],
        ["--max-usd", "inf"],
    ],
)
def test_replay_refuses_amounts_it_cannot_use(
    project_root: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    candidate = str(project_root / "topologies" / "candidates" / "support_triage.yaml")
    with pytest.raises(SystemExit) as exited:
        main(["replay", "--topology", candidate, "--offsets", "0-", *args])
    assert exited.value.code == 2
    assert f"argument {args[0]}" in capsys.readouterr().err


def test_compare_names_a_judge_endpoint_that_is_not_configured(
    project_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = str(project_root / "topologies" / "candidates" / "support_triage.yaml")
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Be fair.")
    argv = ["compare", "--topology", candidate, "--judge-model", "m", "--rubric", str(rubric)]
    assert main([*argv, "--judge-endpoint", "nope"]) == 2
    assert "--judge-endpoint 'nope': no such endpoint" in capsys.readouterr().err
