"""Real Kafka for integration tests: KAFKA_BOOTSTRAP_SERVERS, else testcontainers, else local.

One broker per test session; each test gets its own topics and consumer group, so tests
never see each other's events.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dev import launch
from dev.launch import Child, start_modelsim, start_worker
from dev.topologies import copy_topology
from llmflow.services.broker.local import LocalKafka, free_port
from llmflow.services.worker.orgdata import publish_samples
from llmflow.services.worker.settings import Settings
from tests.integration.helpers import wait_gateway_ready


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no engine, no socket, no permission: all mean "not here"
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield container.get_bootstrap_server()
    else:
        with LocalKafka(tmp_path_factory.mktemp("kafka")) as broker:
            yield broker.bootstrap_servers


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Per-test folder for logs, worker state, org data and images."""
    return tmp_path


@pytest.fixture(scope="session")
def org_samples(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The sample org data published to the default table topics, once per session (the
    policies embedded through a simulator of their own); returns the topic prefix. Tests
    that change org data use a prefix of their own."""
    sim = start_modelsim(free_port(), tmp_path_factory.mktemp("orgdata-sim"), ())
    try:
        settings = Settings(
            kafka_bootstrap_servers=kafka_bootstrap, openai_base_url=sim.extra["base_url"]
        )
        publish_samples(settings)
    finally:
        sim.stop()
    return settings.orgdata_topic_prefix


@pytest.fixture
def modelsim(run_dir: Path) -> Iterator[Callable[..., Child]]:
    """Factory: start the model simulator with the given flags."""
    started: list[Child] = []

    def start(*flags: str) -> Child:
        child = start_modelsim(free_port(), run_dir / "logs", flags)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.fixture
def topology_copy(run_dir: Path) -> Callable[[str], Path]:
    """Copy a shipped topology into `run_dir` with topics unique to this test."""
    suffix = uuid.uuid4().hex[:8]

    def copy(name: str) -> Path:
        return copy_topology(name, run_dir, suffix).path

    return copy


@pytest.fixture
def worker_env(
    kafka_bootstrap: str, run_dir: Path, org_samples: str
) -> Callable[[Child], dict[str, str]]:
    app_id = f"llmflow-test-{uuid.uuid4().hex[:8]}"

    def env(sim: Child) -> dict[str, str]:
        return launch.worker_env(
            kafka_bootstrap,
            sim.extra["base_url"],
            app_id,
            orgdata_topic_prefix=org_samples,
            image_root=run_dir / "images",
            concurrency=50,
        )

    return env


@pytest.fixture
def workers(run_dir: Path) -> Iterator[Callable[..., Child]]:
    """Factory: start `llmflow worker` processes; each gets its own state folder. One
    process each unless `processes` says otherwise (then a supervisor and its children)."""
    started: list[Child] = []

    def start(topologies: list[Path], env: dict[str, str], processes: int = 1) -> Child:
        name = f"worker-{len(started) + 1}"
        data_dir = run_dir / name
        child = start_worker(
            name,
            topologies,
            run_dir / "logs",
            {**env, "LLMFLOW_DATA_DIR": str(data_dir)},
            ["--loglevel", os.environ.get("LLMFLOW_TEST_WORKER_LOGLEVEL", "warn")],
            processes=processes,
        )
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


@pytest.fixture
def gateways(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> Iterator[Callable[..., dict[str, Any]]]:
    """Factory: the model simulator, a worker and a gateway over copies of both shipped
    topologies, the gateway following the worker's group. Takes the gateway's `tokens`,
    the worker's extra environment, and further gateway settings by field name; returns
    once the gateway is ready: its address, the topologies and the processes."""
    started: list[Child] = []

    def start(
        tokens: dict[str, Any], worker_extra: dict[str, str] | None = None, **settings: str
    ) -> dict[str, Any]:
        triage_path = topology_copy("support_triage")
        images_path = topology_copy("product_images")
        (run_dir / "images").mkdir(exist_ok=True)
        env = worker_env(modelsim())
        worker = workers([triage_path, images_path], env | (worker_extra or {}))
        port = free_port()
        child = launch.spawn(
            "gateway",
            ["gateway", "--topology", str(triage_path), "--topology", str(images_path)],
            run_dir / "logs",
            {
                "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "LLMFLOW_GATEWAY_PORT": str(port),
                "LLMFLOW_GATEWAY_TOKENS": json.dumps(tokens),
                "LLMFLOW_GATEWAY_WORKER_GROUP": env["LLMFLOW_APP_ID"],
            }
            | {f"LLMFLOW_GATEWAY_{name.upper()}": value for name, value in settings.items()},
        )
        started.append(child)
        base = f"http://127.0.0.1:{port}"
        launch.wait_http(f"{base}/healthz", child)
        wait_gateway_ready(base, worker)
        return {
            "base": base,
            "triage": yaml.safe_load(triage_path.read_text()),
            "images": yaml.safe_load(images_path.read_text()),
            "image_root": run_dir / "images",
            "child": child,
            "worker": worker,
        }

    yield start
    for child in started:
        child.stop()
