"""The built wheel, installed in a clean virtualenv, beside a user's own `services/` and
`schemas/` packages: it ships the product only, imports as `llmflow`, and runs the README's
SDK example against a worker and the model simulator started from its own commands."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dev.launch import wait_http
from dev.topologies import copy_topology
from llmflow.services.broker.local import free_port
from llmflow.topologies.loader import load_topology

pytestmark = pytest.mark.integration

# What a checkout holds that a wheel build must not read (and could not want).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".llmflow", "build", "*.egg-info", "lib", "results", "__pycache__"
)


@pytest.fixture(scope="module")
def wheel(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy, so no stale `build/` folder of the checkout can leak into it."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(project_root, source, symlinks=True, ignore=_NOT_SOURCE)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(source)],
        check=True,
        capture_output=True,
    )
    return next(work.glob("llmflow-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel: Path, project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv with the wheel and its dependencies (pinned as in the tests)."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    constraints = project_root / "constraints.txt"
    subprocess.run(
        [path / "bin" / "pip", "install", "-q", "-c", constraints, wheel],
        check=True,
        capture_output=True,
    )
    return path / "bin"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A downstream application with packages named like llmflow's folders."""
    for name in ("services", "schemas", "topologies"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f'OWNER = "app:{name}"\n')
    return tmp_path


def test_wheel_holds_the_product_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "llmflow",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    for shipped in (
        "llmflow/__init__.py",
        "llmflow/py.typed",
        "llmflow/schemas/json/event.schema.json",
        "llmflow/topologies/support_triage.yaml",
        "llmflow/services/orgdata/samples/customers.jsonl",
        "llmflow/services/broker/kafka/pom.xml",
        "llmflow/services/modelsim/cli.py",
    ):
        assert shipped in names
    unwanted = [n for n in names if re.search(r"/(bench|dev|tests)/|demo\.py$|launch\.py$", n)]
    assert unwanted == []
    assert not [n for n in names if n.endswith(".jar")]
    entry_points = zipfile.ZipFile(wheel).read(
        wheel.name.split("-py")[0] + ".dist-info/entry_points.txt"
    )
    assert b"llmflow = llmflow.services.cli:main" in entry_points
    assert b"llmflow-modelsim = llmflow.services.modelsim.cli:main" in entry_points


def test_import_root_is_not_shadowed_by_the_apps_packages(venv: Path, app_dir: Path) -> None:
    check = (
        "import llmflow, services, schemas, topologies\n"
        "from llmflow import EventProducer, ResultConsumer, Output, text_event\n"
        "assert services.OWNER == 'app:services' and schemas.OWNER == 'app:schemas'\n"
        "print(llmflow.__file__)\n"
    )
    done = subprocess.run(
        [venv / "python", "-c", check], cwd=app_dir, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "site-packages/llmflow/__init__.py" in done.stdout


def test_kafka_fetch_works_from_the_installed_wheel(venv: Path, app_dir: Path) -> None:
    lib = app_dir / "kafka-lib"
    done = subprocess.run(
        [venv / "llmflow", "kafka", "fetch"],
        cwd=app_dir,
        env={**os.environ, "LLMFLOW_KAFKA_LIB": str(lib)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(lib.glob("kafka_2.13-4.*.jar"))
    assert not list(venv.parent.glob("lib/python*/site-packages/llmflow/**/target"))


def _readme_example(project_root: Path) -> str:
    readme = (project_root / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    sdk: list[str] = [block for block in blocks if "from llmflow import" in block]
    assert len(sdk) == 1, "the README shows one SDK example"
    return sdk[0]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_readme_sdk_example_runs_against_the_installed_worker(
    venv: Path,
    app_dir: Path,
    project_root: Path,
    kafka_bootstrap: str,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    suffix = uuid.uuid4().hex[:8]
    copy = copy_topology("support_triage", app_dir, suffix)
    shipped = load_topology(project_root / "topologies" / "support_triage.yaml")
    topics = dict(zip(shipped.topics, copy.topology.topics, strict=True))
    topology = copy.path

    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "OPENAI_API_KEY": "simulator",
        "LLMFLOW_APP_ID": f"wheel-{suffix}",
        "LLMFLOW_DATA_DIR": str(app_dir / "state"),
        "LLMFLOW_ORGDATA_TOPIC_PREFIX": f"wheel-{suffix}.orgdata.",
    }

    def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=app_dir, env=env, capture_output=True, text=True)

    log = (app_dir / "processes.log").open("ab")
    commands: list[list[str | Path]] = [
        [venv / "llmflow-modelsim", "--port", str(port)],
        [venv / "llmflow", "worker", "--topology", topology],
    ]
    for command in commands:
        processes.append(
            subprocess.Popen(command, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
        if command[0] == venv / "llmflow-modelsim":
            # The worker checks the endpoint as it starts (and exits 2 if it does not answer);
            # the samples' policies are embedded through it as they are loaded.
            wait_http(f"http://127.0.0.1:{port}/healthz")
            loaded = run(venv / "llmflow", "orgdata", "load", "--samples")
            assert loaded.returncode == 0, loaded.stderr
            assert "policies: 47 records published" in loaded.stdout, loaded.stdout

    example = _readme_example(project_root).replace("127.0.0.1:9092", kafka_bootstrap)
    for name, unique in topics.items():  # quoted: "support.tickets" is in ".dlq" too
        example = example.replace(f'"{name}"', f'"{unique}"')
    script = app_dir / "example.py"
    script.write_text(example)
    # The worker needs a few seconds to join its group: run the example until its event
    # is answered (each run publishes one more event, so later runs print earlier answers).
    deadline = time.monotonic() + 120
    lines: list[str] = []
    while not lines and time.monotonic() < deadline:
        assert all(p.poll() is None for p in processes), (app_dir / "processes.log").read_text()
        done = run(venv / "python", script)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
    assert lines, (app_dir / "processes.log").read_text()[-3000:]
    for line in lines:  # event id, the summary, prompt tokens
        event_id, _, rest = line.partition(" ")
        assert re.fullmatch(r"[0-9a-f-]{36}", event_id), line
        assert "not answered" not in rest and int(rest.split()[-1]) > 0, line
