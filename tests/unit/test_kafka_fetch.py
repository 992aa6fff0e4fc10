"""Where `llmflow kafka fetch` finds its Maven file and puts the jars, in a checkout and
from an installed wheel (whose package folder must never be written to)."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmflow.services.broker import local

# A stand-in for Maven: records how it was called, then "downloads" one jar into
# -DoutputDirectory, as `dependency:copy-dependencies` does.
FAKE_MVN = """#!/bin/sh
printf '%s\\n' "$PWD" "$@" > "$MVN_CALLS"
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;; esac
done
mkdir -p "$out" && touch "$out/kafka_2.13-4.1.1.jar"
"""


@pytest.fixture
def installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, project_root: Path
) -> Iterator[Path]:
    """The package as a wheel installs it: `kafka/` a read-only folder holding copies."""
    kafka = tmp_path / "site-packages" / "llmflow" / "services" / "broker" / "kafka"
    kafka.mkdir(parents=True)
    for name in ("pom.xml", "log4j2.properties"):
        shutil.copyfile(project_root / "deploy" / "kafka" / name, kafka / name)
    kafka.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setattr(local, "KAFKA_DIR", kafka)
    monkeypatch.delenv(local.LIB_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield kafka
    kafka.chmod(stat.S_IRWXU)


@pytest.fixture
def fake_mvn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(FAKE_MVN)
    mvn.chmod(0o755)
    calls = tmp_path / "mvn-calls.txt"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MVN_CALLS", str(calls))
    return calls


def test_a_checkout_keeps_the_jars_in_deploy_kafka_lib(
    project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(local.LIB_ENV, raising=False)
    assert local.KAFKA_DIR.is_symlink()
    assert (local.KAFKA_DIR / "pom.xml").samefile(project_root / "deploy" / "kafka" / "pom.xml")
    assert local.lib_dir() == project_root / "deploy" / "kafka" / "lib"


def test_an_installed_wheel_keeps_the_jars_in_the_user_cache(
    installed: Path, tmp_path: Path
) -> None:
    assert local.lib_dir() == tmp_path / "cache" / "llmflow" / "kafka-4.1.1" / "lib"


def test_the_environment_variable_wins(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(local.LIB_ENV, str(tmp_path / "jars"))
    assert local.lib_dir() == tmp_path / "jars"


def test_a_relative_cache_home_is_ignored(installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert local.lib_dir() == Path.home() / ".cache" / "llmflow" / "kafka-4.1.1" / "lib"


def test_fetch_runs_maven_outside_the_package_and_names_the_output(
    installed: Path, fake_mvn: Path
) -> None:
    lib = local.fetch_kafka()
    assert lib == local.lib_dir() and local.kafka_is_fetched()
    cwd, *args = fake_mvn.read_text().splitlines()
    pom = Path(args[args.index("-f") + 1])
    assert pom.name == "pom.xml" and pom.parent == Path(cwd)
    assert not pom.is_relative_to(installed) and not Path(cwd).is_relative_to(installed)
    assert f"-DoutputDirectory={lib}" in args
    assert "dependency:copy-dependencies" in args
    assert sorted(p.name for p in installed.iterdir()) == ["log4j2.properties", "pom.xml"]


def test_fetch_does_nothing_when_the_jars_are_there(
    installed: Path, fake_mvn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "jars"
    lib.mkdir()
    (lib / "kafka_2.13-4.1.1.jar").touch()
    monkeypatch.setenv(local.LIB_ENV, str(lib))
    assert local.fetch_kafka() == lib
    assert not fake_mvn.exists()
