"""`llmflow worker` with a wrong broker, endpoint or key exits at once (code 2) with one line
that names the environment variable to fix."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dev.launch import Child

pytestmark = pytest.mark.integration

LIMIT_S = 10.0  # from start to exit, Python's start-up and imports included


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port held by a socket that never listens: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _worker(
    project_root: Path, run_dir: Path, bootstrap: str, base_url: str, api_key: str = "simulator"
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": api_key,
        "LLMFLOW_PREFLIGHT": "true",
        "LLMFLOW_DATA_DIR": str(run_dir / "worker"),
    }
    topology = project_root / "topologies" / "support_triage.yaml"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "llmflow.services.cli", "worker", "--topology", str(topology)],
        capture_output=True,
        text=True,
        env=env,
        cwd=run_dir,
        timeout=60,
        check=False,
    )
    return done, time.monotonic() - started


def _one_line(done: subprocess.CompletedProcess[str], elapsed: float) -> str:
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert elapsed < LIMIT_S, f"took {elapsed:.1f} s"
    assert lines[0].startswith("llmflow worker: ")
    return lines[0].removeprefix("llmflow worker: ")


def test_a_refused_model_endpoint(
    project_root: Path, run_dir: Path, kafka_bootstrap: str, closed_port: int
) -> None:
    url = f"http://127.0.0.1:{closed_port}/v1"
    line = _one_line(*_worker(project_root, run_dir, kafka_bootstrap, url))
    assert line == f"OPENAI_BASE_URL={url}: connection refused"


def test_a_refused_broker(
    project_root: Path, run_dir: Path, modelsim: Callable[..., Child], closed_port: int
) -> None:
    sim = modelsim()
    servers = f"127.0.0.1:{closed_port}"
    line = _one_line(*_worker(project_root, run_dir, servers, sim.extra["base_url"]))
    assert line == (
        f"KAFKA_BOOTSTRAP_SERVERS={servers}: no Kafka broker answered within 5 s "
        "(connection refused)"
    )


def test_a_rejected_key(
    project_root: Path, run_dir: Path, kafka_bootstrap: str, modelsim: Callable[..., Child]
) -> None:
    sim = modelsim("--require-api-key", "the-right-key")
    url = sim.extra["base_url"]
    done, elapsed = _worker(project_root, run_dir, kafka_bootstrap, url, api_key="a-wrong-key")
    line = _one_line(done, elapsed)
    assert line.startswith(f"OPENAI_API_KEY: rejected by {url}: HTTP 401: ")
    assert "a-wrong-key" not in done.stderr


def test_a_silent_port_is_no_broker(
    project_root: Path, run_dir: Path, modelsim: Callable[..., Child]
) -> None:
    """The simulator's own port takes the connection, but speaks no Kafka."""
    sim = modelsim()
    servers = sim.extra["base_url"].removeprefix("http://").removesuffix("/v1")
    line = _one_line(*_worker(project_root, run_dir, servers, sim.extra["base_url"]))
    assert line.startswith(f"KAFKA_BOOTSTRAP_SERVERS={servers}: no Kafka broker answered")
    assert "does not answer as Kafka" in line
