"""The `llmflow` command explains itself: help on every option, the environment variable
behind each setting, one-line errors for missing files, one plain log format."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmflow.logs import LOG_FORMAT, setup_logging
from llmflow.services import cli
from llmflow.services.broker import local
from llmflow.services.cli import build_parser, main
from llmflow.services.worker.settings import Settings

Command = tuple[str, ...]

# Options that override a setting: each names the setting's environment variable.
SETTING_OPTIONS: dict[tuple[Command, str], str] = {
    ((), "--bootstrap-servers"): "kafka_bootstrap_servers",
    (("worker",), "--concurrency"): "concurrency",
    (("worker",), "--app-id"): "app_id",
    (("worker",), "--processes"): "processes",
}


def env_name(field: str) -> str:
    """The variable a setting is read from: its customary name, else LLMFLOW_<FIELD>."""
    alias = Settings.model_fields[field].validation_alias
    choices = getattr(alias, "choices", None)
    return str(choices[0]) if choices else f"LLMFLOW_{field.upper()}"


def walk(
    parser: argparse.ArgumentParser, command: Command = ()
) -> Iterator[tuple[Command, argparse.Action]]:
    """Every option and positional argument of every (sub)command, with its command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:  # the one-line help of each subcommand
                yield (*command, choice.dest), choice
            for name, child in action.choices.items():
                yield from walk(child, (*command, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield command, action


def test_every_option_and_command_has_help() -> None:
    found = list(walk(build_parser()))
    assert len(found) > 60, "the walk must reach the subcommands"
    missing = [
        f"{' '.join(command)} {action.option_strings or action.dest}"
        for command, action in found
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert missing == []


def test_options_that_override_a_setting_name_its_variable() -> None:
    options = {
        (command, flag): action
        for command, action in walk(build_parser())
        for flag in action.option_strings
    }
    for (command, flag), field in SETTING_OPTIONS.items():
        help_text = options[command, flag].help or ""
        assert env_name(field) in help_text, (command, flag)
    # A worker option named after a setting is one: it must be in the table above.
    for (command, flag), action in options.items():
        if command == ("worker",) and action.dest in Settings.model_fields:
            assert SETTING_OPTIONS.get((command, flag)) == action.dest, flag
    assert set(cli.WORKER_FLAGS) == {
        field for (command, _), field in SETTING_OPTIONS.items() if command == ("worker",)
    }


@pytest.fixture
def fake_broker(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """LocalKafka replaced by a stand-in; returns the ports it was started with."""
    started: list[int] = []
    secured: list[bool | None] = []

    @dataclass
    class FakeBroker:
        data_dir: Path
        port: int = 0
        secure: bool | None = None

        @property
        def bootstrap_servers(self) -> str:
            return f"127.0.0.1:{self.port or 40000}"

        def environment(self) -> dict[str, str]:
            env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}
            if self.secure:
                env |= {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
                env |= {"KAFKA_SSL_CA_LOCATION": str(self.data_dir / "security" / "ca.pem")}
            return env

        def start(self) -> FakeBroker:
            started.append(self.port)
            secured.append(self.secure)
            return self

        def stop(self) -> None:
            pass

    monkeypatch.setattr(local, "LocalKafka", FakeBroker)
    monkeypatch.setattr(local, "port_is_free", lambda port: True)
    monkeypatch.setattr(cli, "_wait_for_signal", lambda: None)
    return started


def test_kafka_start_listens_on_9092_and_prints_the_line_to_export(
    fake_broker: list[int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kafka", "start", "--data-dir", str(tmp_path / "new")]) == 0
    assert fake_broker == [9092]
    assert capsys.readouterr().out == "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092\n"
    assert main(["kafka", "start", "--data-dir", str(tmp_path / "other"), "--port", "0"]) == 0
    assert fake_broker[-1] == 0  # LocalKafka picks a free one


def test_kafka_start_secure_prints_every_setting_a_client_needs(
    fake_broker: list[int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "with space"
    assert main(["kafka", "start", "--secure", "--data-dir", str(folder)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092",
        "export KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        f"export KAFKA_SSL_CA_LOCATION='{folder}/security/ca.pem'",  # quoted for the shell
    ]


def test_kafka_start_keeps_the_port_of_a_folder_started_before(
    fake_broker: list[int], tmp_path: Path
) -> None:
    local.BrokerState("AbCdEfGhIjKlMnOpQrStUw", 19092, 19093).write(tmp_path / local.STATE_FILE)
    assert main(["kafka", "start", "--data-dir", str(tmp_path)]) == 0
    assert fake_broker == [19092]


def test_kafka_start_on_a_taken_port_says_so_in_one_line(
    fake_broker: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(local, "port_is_free", lambda port: False)
    assert main(["kafka", "start", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmflow: error: port 9092 is in use") and "--port 0" in err
    assert err.count("\n") == 1 and fake_broker == []


@pytest.mark.parametrize(
    "argv",
    [
        ["produce", "--topic", "t", "--file", "{missing}"],
        ["worker", "--topology", "{missing}"],
        ["orgdata", "load", "products", "{missing}.csv"],
        ["topology", "validate", "{missing}"],
        ["replay", "--topology", "{missing}", "--offsets", "0-"],
        ["compare", "--topology", "{missing}"],
        ["compare", "--topology", "{candidate}", "--judge-model", "m", "--rubric", "{missing}"],
    ],
)
def test_a_missing_file_is_one_line_and_exit_2(
    argv: list[str],
    project_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")  # never reached
    missing = str(tmp_path / "missing")
    candidate = str(project_root / "topologies" / "candidates" / "support_triage.yaml")
    args = [a.format(missing=missing, candidate=candidate) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmflow: error: ") and missing in err
    assert err.count("\n") == 1, err


def test_a_folder_given_as_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["produce", "--topic", "t", "--file", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"llmflow: error: --file {tmp_path}: Is a directory\n"


def test_consume_is_bounded_and_groupless_by_default() -> None:
    args = build_parser().parse_args(["consume", "t"])
    assert args.idle_timeout == cli.CONSUME_IDLE_S < float("inf") and args.group is None
    assert build_parser().parse_args(["consume", "t", "--idle-timeout", "inf"]).idle_timeout


def test_every_command_logs_in_one_plain_format(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        setup_logging(logging.INFO)
        setup_logging(logging.INFO)  # again: still one handler of ours
        ours = [h for h in root.handlers if h not in before]
        assert len(ours) == 1
        formatter = ours[0].formatter
        assert formatter is not None and formatter._fmt == LOG_FORMAT
        logging.getLogger("llmflow.test").info("hello")
        assert capsys.readouterr().err.endswith(" INFO llmflow.test: hello\n")
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(logging.WARNING)


def test_the_worker_leaves_logging_to_llmflow() -> None:
    """faust's own setup installs coloured handlers (coloured whenever stdout is a
    terminal, even with stderr in a file) and a spinner that writes cursor codes."""
    import faust

    from llmflow.services.worker.app import _Worker

    app = faust.App("llmflow-test-logs", broker="kafka://127.0.0.1:1", web_enabled=False)
    worker = _Worker(app, drain_timeout_s=5)
    assert worker.spinner is None and not worker.override_logging
    assert worker.drain_timeout_s == 5


def test_a_wrong_setting_is_named_by_its_variable(
    project_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMFLOW_CONCURRENCY", "many")
    topology = str(project_root / "topologies" / "support_triage.yaml")
    assert main(["worker", "--topology", topology]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmflow: error: LLMFLOW_CONCURRENCY: ") and err.count("\n") == 1


@pytest.mark.parametrize("variable", ["LLMFLOW_QUOTAS", "LLMFLOW_RETRY", "LLMFLOW_BUDGETS"])
def test_a_json_setting_that_is_no_json_is_one_line_without_its_value(
    variable: str,
    project_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, "not json sk-secret-value")
    topology = str(project_root / "topologies" / "support_triage.yaml")
    assert main(["worker", "--topology", topology]) == 2
    err = capsys.readouterr().err
    assert err == f"llmflow: error: {variable}: not valid JSON\n"
