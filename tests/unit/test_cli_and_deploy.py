"""The command line and the deployment files agree with each other."""

from __future__ import annotations

import argparse
import fnmatch
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

from llmflow.services import cli, modelsim
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
    assert len(services) == 4
    entry_points = {name: s.get("entrypoint", ["llmflow"]) for name, s in services.items()}
    assert entry_points["modelsim"] == ["llmflow-modelsim"]
    for name, service in services.items():
        (entry_point,) = entry_points[name]
        args = PARSERS[entry_point]().parse_args(service["command"])
        for topology in getattr(args, "topology", None) or []:
            assert (project_root / topology).is_file(), topology
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:4.")


def test_compose_runs_on_old_compose_and_checks_worker_health(project_root: Path) -> None:
    """Debian's docker-compose 1.29 refuses a top-level `name`; the worker's healthcheck
    asks the port and path the worker serves; every LLMFLOW_/KAFKA_/OPENAI_ variable is
    a setting; the broker answers the host on the port it advertises."""
    from llmflow.services.gateway.settings import GatewaySettings
    from llmflow.services.worker.health import Readiness, health_app
    from llmflow.services.worker.metrics import Metrics
    from llmflow.services.worker.settings import Settings

    compose = yaml.safe_load((project_root / "docker-compose.yml").read_text())
    assert set(compose) == {"x-llmflow", "services"}
    worker = compose["services"]["worker"]
    env = worker["environment"]
    check = " ".join(worker["healthcheck"]["test"])
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
    assert url is not None and url.group(1) == env["LLMFLOW_METRICS_PORT"]
    paths = {
        r.resource.canonical
        for r in health_app(Metrics().registry, Readiness()).router.routes()
        if r.resource
    }
    assert url.group(2) in paths and env["LLMFLOW_METRICS_HOST"] == "0.0.0.0"
    assert env["LLMFLOW_PROCESSES"] == "1"  # replicas scale; one process each
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"LLMFLOW_{name.upper()}")
        alias = field.validation_alias
        names |= set(getattr(alias, "choices", ()))
    names |= {f"LLMFLOW_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    for service in compose["services"].values():
        for variable in service.get("environment", {}):
            if (
                variable.startswith(("LLMFLOW_", "OPENAI_"))
                or variable == "KAFKA_BOOTSTRAP_SERVERS"
            ):
                assert variable in names, variable
    kafka = compose["services"]["kafka"]
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    host_port = re.search(r"EXTERNAL://127\.0\.0\.1:(\d+)", advertised)
    assert host_port is not None
    assert f"127.0.0.1:{host_port.group(1)}:{host_port.group(1)}" in kafka["ports"]
    # The stop grace outlasts the drain (LLMFLOW_DRAIN_TIMEOUT_S, 30 s by default).
    assert int(worker["stop_grace_period"].removesuffix("s")) > Settings().drain_timeout_s


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore pattern takes `path` or a folder above it (the patterns
    here: names, folder paths, `**/` prefixes and `*` globs)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        anywhere = pattern.startswith("**/")
        glob = pattern.removeprefix("**/")
        for prefix in prefixes:
            name = prefix.rsplit("/", 1)[-1] if anywhere or "/" not in glob else prefix
            if fnmatch.fnmatchcase(name, glob):
                return True
    return False


def test_the_image_context_leaves_out_what_a_checkout_grows(project_root: Path) -> None:
    patterns = [
        line.strip()
        for line in (project_root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for grown in [
        ".venv/lib/x.py",
        ".llmflow/demo/kafka/log",
        "deploy/kafka/lib/kafka.jar",
        ".git/HEAD",
        "services/worker/__pycache__/app.cpython-311.pyc",
        "tests/x.py",
    ]:
        assert _ignored(grown, patterns), grown
    # What the Dockerfile copies stays in.
    dockerfile = (project_root / "deploy" / "docker" / "Dockerfile").read_text()
    copied = [
        word
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for word in line.split()[1:-1]
    ]
    assert "llmflow" in copied and "deploy/kafka/pom.xml" in copied
    for source in copied:
        assert not _ignored(source, patterns), source
    assert "USER 10001" in dockerfile  # not root


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


def test_version_and_bootstrap_servers_for_every_command(
    project_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("llmflow ")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-env:9092")
    good = str(project_root / "topologies" / "support_triage.yaml")
    assert main(["--bootstrap-servers", "flag:9092", "topology", "validate", good]) == 0
    from llmflow.services.worker.settings import Settings

    assert Settings().kafka_bootstrap_servers == "flag:9092"


def test_produce_names_a_missing_image_and_warns_of_one_sent_as_a_file_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import llmflow.services.sdk as sdk

    sent: list[tuple[str, object]] = []

    class Producer:
        def __init__(self, servers: str) -> None:
            pass

        def __enter__(self) -> Producer:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def send(self, topic: str, event: object) -> None:
            sent.append((topic, event))

    monkeypatch.setattr(sdk, "EventProducer", Producer)
    monkeypatch.setattr(cli, "_kafka", lambda settings: settings.kafka_bootstrap_servers)
    missing = tmp_path / "nope.jpg"
    assert main(["produce", "--topic", "t", "--key", "k", "--image", str(missing)]) == 2
    assert f"--image {missing}: No such file or directory" in capsys.readouterr().err
    assert sent == []
    large = tmp_path / "large.jpg"
    large.write_bytes(b"\xff" * (600 * 1024))  # over the 512 KiB sent inline
    assert main(["produce", "--topic", "t", "--key", "k", "--image", str(large)]) == 0
    assert "LLMFLOW_IMAGE_ROOT" in capsys.readouterr().err and len(sent) == 1


def test_kafka_start_secure_prints_what_a_client_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llmflow kafka start --secure` (as the README shows) starts a SASL_SSL folder and
    prints the export lines of its settings; the folder stays secure without the flag."""
    from llmflow.services.broker.local import LocalKafka

    def start(self: LocalKafka, timeout_s: float = 90.0) -> LocalKafka:
        state = self._state()  # all of a start but the JVM
        self.port, self.secure = state.port, state.secure
        self._write_config(state.controller_port)
        state.write(self.data_dir / "llmflow-broker.json")
        return self

    monkeypatch.setattr(LocalKafka, "start", start)
    monkeypatch.setattr(LocalKafka, "stop", lambda self, timeout_s=30.0: None)
    monkeypatch.setattr(cli, "_wait_for_signal", lambda: None)
    folder = tmp_path / "secure"
    assert main(["kafka", "start", "--secure", "--data-dir", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    exported = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    assert exported["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert exported["KAFKA_SSL_CA_LOCATION"] == str(folder / "security" / "ca.pem")
    assert exported == LocalKafka(folder, secure=True).environment() | {
        "KAFKA_BOOTSTRAP_SERVERS": exported["KAFKA_BOOTSTRAP_SERVERS"]
    }
    assert main(["kafka", "start", "--data-dir", str(folder)]) == 0
    assert "export KAFKA_SASL_PASSWORD=" in capsys.readouterr().out
