"""docker-compose.yml is a valid Compose file (the Compose Specification's schema, and the
Compose tools found on the machine), and its Prometheus and Grafana see the workers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from llmflow.services.worker.health import Readiness, health_app
from llmflow.services.worker.metrics import Metrics
from tests.conftest import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
SCHEMA = Path(__file__).parent / "compose-spec" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (short syntax)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = (PROJECT_ROOT / source).resolve()
    return mounts


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []


@pytest.mark.parametrize(
    "command",
    [["docker-compose"], ["docker", "compose"]],
    ids=["docker-compose-1", "docker-compose-2"],
)
def test_compose_tools_accept_the_file(command: list[str]) -> None:
    """Debian's docker-compose 1.29 and the Compose v2 plugin, each where installed (no
    engine needed: `config` only reads the file)."""
    if not shutil.which(command[0]):
        pytest.skip(f"{command[0]} is not installed (Debian: apt-get install docker-compose)")
    if command == ["docker", "compose"]:
        probe = subprocess.run([*command, "version"], capture_output=True, timeout=60, check=False)
        if probe.returncode != 0:
            pytest.skip("the docker CLI has no compose plugin")
    done = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 0, done.stderr


def test_prometheus_scrapes_every_worker_replica(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config_file = _mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_file.read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    worker = services["worker"]
    # One A record per replica: the service's name, the port its workers serve metrics on.
    assert worker["deploy"]["replicas"] >= 2
    assert discovery["names"] == ["worker"] and discovery["type"] == "A"
    assert discovery["port"] == int(worker["environment"]["LLMFLOW_METRICS_PORT"])
    assert worker["environment"]["LLMFLOW_METRICS_HOST"] == "0.0.0.0"
    routes = {
        r.resource.canonical
        for r in health_app(Metrics().registry, Readiness()).router.routes()
        if r.resource
    }
    assert job.get("metrics_path", "/metrics") in routes


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    mounts = _mounts(services["grafana"])
    provisioning = mounts["/etc/grafana/provisioning"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    prometheus_port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "llmflow.yml").read_text())[
        "providers"
    ]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "llmflow.json").is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[str(Path(home).parent)] == dashboards
    for service in services.values():
        for host_path in _mounts(service).values():
            assert host_path.exists(), host_path
