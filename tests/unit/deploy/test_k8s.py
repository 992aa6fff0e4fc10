"""deploy/k8s agrees with the code it deploys: settings, probes, ports, consumer group,
topics, topology files, labels, security. Rendered offline (see `kustomize.py`)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from llmflow.services.broker.security import KafkaSecurity, KafkaSecuritySettings
from llmflow.services.cli import build_parser
from llmflow.services.gateway.app import Gateway
from llmflow.services.gateway.auth import Authenticator
from llmflow.services.gateway.settings import GatewaySettings
from llmflow.services.modelsim import SimulatorConfig, make_app
from llmflow.services.modelsim import cli as modelsim_cli
from llmflow.services.worker.health import Readiness, health_app
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.settings import Settings
from llmflow.topologies.loader import load_topology
from tests.conftest import PROJECT_ROOT
from tests.unit.deploy import kustomize
from tests.unit.deploy.kustomize import Object, pod_spec

K8S = PROJECT_ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = ["base", "overlays/example"]
# The oldest Kubernetes the manifests are meant for (docs/kubernetes.md) and the newest
# whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
CORE_API_GROUPS = {"v1", "apps/v1", "batch/v1", "policy/v1"}
# KAFKA_SASL_MECHANISM in the words of KEDA's Kafka scaler (`sasl`).
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
# The image's command and the parser of its arguments.
PARSERS = {"llmflow": build_parser, "llmflow-modelsim": modelsim_cli.build_parser}


def variables(settings: type[BaseSettings]) -> dict[str, set[str]]:
    """Field -> the environment variables it reads: its aliases where it declares them
    (pydantic-settings then ignores the prefixed name), else prefix + field name."""
    prefix = settings.model_config.get("env_prefix", "")
    found = {}
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            found[name] = {f"{prefix}{name}".upper()}
        elif isinstance(alias, str):
            found[name] = {alias}
        else:
            found[name] = {c for c in getattr(alias, "choices", ()) if isinstance(c, str)}
    return found


def setting_names(settings: type[BaseSettings]) -> set[str]:
    return set().union(*variables(settings).values())


def secret_names(settings: type[BaseSettings]) -> set[str]:
    """The variables whose values are secrets (`SecretStr` fields)."""
    fields = settings.model_fields
    return {
        variable
        for name, names in variables(settings).items()
        if SecretStr in _types(fields[name].annotation)
        for variable in names
    }


def _types(annotation: Any) -> set[Any]:
    args = getattr(annotation, "__args__", None)
    return {annotation} if args is None else {t for a in args for t in _types(a)}


SETTINGS = (
    setting_names(Settings) | setting_names(KafkaSecuritySettings) | setting_names(GatewaySettings)
)
SECRETS = secret_names(Settings) | secret_names(KafkaSecuritySettings)


@dataclass
class Rendered:
    """One kustomization's objects and the ways the checks look into them."""

    path: str
    objects: list[Object]

    def of_kind(self, kind: str) -> list[Object]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> Object:
        (found,) = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found

    def workloads(self) -> list[Object]:
        return [o for o in self.objects if pod_spec(o)]

    @property
    def worker(self) -> Object:
        (found,) = [d for d in self.of_kind("Deployment") if _command(d)[1][:1] == ["worker"]]
        return found

    @property
    def worker_container(self) -> Object:
        (container,) = self.worker["spec"]["template"]["spec"]["containers"]
        return dict(container)

    def environment(self, container: Object) -> dict[str, str]:
        """The container's variables with literal or ConfigMap values (secrets left out)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            ref = source["configMapRef"]["name"]
            env |= self.one("ConfigMap", ref)["data"]
        for variable in container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = variable["value"]
        return env

    @property
    def settings(self) -> dict[str, str]:
        return self.environment(self.worker_container)

    def setting(self, name: str) -> str:
        """A worker setting as the pod sees it: from its environment, else the default."""
        if name in self.settings:
            return self.settings[name]
        field = name.removeprefix("LLMFLOW_").lower()
        return str(Settings.model_fields[field].default)


def _command(workload: Object) -> tuple[str, list[str]]:
    """The program a workload's one container runs and its arguments."""
    (container,) = pod_spec(workload)["containers"]  # type: ignore[index]
    command = container.get("command", ["llmflow"])  # the image's ENTRYPOINT
    return command[0], [*command[1:], *container.get("args", [])]


def _parse(workload: Object) -> argparse.Namespace:
    program, args = _command(workload)
    return PARSERS[program]().parse_args(args)


def _render(path: str) -> list[Object]:
    command = kustomize.kustomize_command()
    if command is None:
        return kustomize.build(K8S / path)
    return kustomize.build_with_kustomize(K8S / path, command)


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, _render(request.param))


@pytest.fixture(scope="module")
def example() -> Rendered:
    return Rendered("overlays/example", _render("overlays/example"))


def _probes(container: Object) -> Iterator[tuple[str, Object]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            yield kind, container[kind]["httpGet"]


def _port(container: Object, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def _pod_labels(workload: Object) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


# --- the reader -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_reader_agrees_with_kustomize(path: str) -> None:
    command = kustomize.kustomize_command()
    if command is None:
        pytest.skip("no kustomize or kubectl on PATH: the checks use the reader alone")
    ours = kustomize.build(K8S / path)
    generated = {o["metadata"]["name"] for o in ours if o["kind"] == "ConfigMap"}
    theirs = kustomize.build_with_kustomize(K8S / path, command)
    theirs = kustomize.strip_generated_suffixes(theirs, generated)

    def key(o: Object) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    assert sorted(ours, key=key) == sorted(theirs, key=key)


def test_the_reader_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches: []\n")
    with pytest.raises(kustomize.UnsupportedKustomization, match="patches"):
        kustomize.build(tmp_path)


# --- topologies -----------------------------------------------------------------------------


def test_the_topology_copies_equal_the_repository_files() -> None:
    copies = sorted((K8S / "base" / "topologies").glob("*.yaml"))
    assert copies
    for copy in copies:
        source = PROJECT_ROOT / "topologies" / copy.name
        assert copy.read_text() == source.read_text(), (
            f"refresh the copy: cp topologies/{copy.name} deploy/k8s/base/topologies/"
        )


def _mounted_topologies(rendered: Rendered, tmp_path: Path) -> list[Path]:
    """The worker's --topology files, written out from the ConfigMaps mounted where the
    arguments look for them, so that they load as the worker would load them."""
    spec = rendered.worker["spec"]["template"]["spec"]
    container = rendered.worker_container
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    paths = []
    for topology in _parse(rendered.worker).topology:
        folder, name = topology.rsplit("/", 1)
        assert folder in mounts, f"{topology}: no volume is mounted at {folder}"
        config_map = rendered.one("ConfigMap", mounts[folder]["configMap"]["name"])
        assert name in config_map["data"], f"{topology}: not in ConfigMap {config_map}"
        local = tmp_path / folder.lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        for key, text in config_map["data"].items():
            (local / key).write_text(text)
        paths.append(local / name)
    return paths


def test_every_topology_the_worker_names_is_mounted_and_valid(
    rendered: Rendered, tmp_path: Path
) -> None:
    paths = _mounted_topologies(rendered, tmp_path)
    assert len(paths) == 2
    for path in paths:
        load_topology(path)  # shadow candidates too, beside it


def test_keda_scales_on_the_input_topics_of_the_group(rendered: Rendered, tmp_path: Path) -> None:
    inputs = {load_topology(p).input_topic for p in _mounted_topologies(rendered, tmp_path)}
    container = rendered.worker_container
    env = rendered.settings
    (scaled,) = rendered.of_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == rendered.worker["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    topics = []
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == rendered.setting("LLMFLOW_APP_ID")
        if "bootstrapServersFromEnv" in meta:
            # KEDA reads it from the scale target's container, env and envFrom.
            assert meta["bootstrapServersFromEnv"] == "KAFKA_BOOTSTRAP_SERVERS"
            assert "KAFKA_BOOTSTRAP_SERVERS" in rendered.environment(container)
        else:
            assert meta["bootstrapServers"] == env["KAFKA_BOOTSTRAP_SERVERS"]
        assert meta["topic"] in inputs
        topics.append(meta["topic"])
        assert int(meta["lagThreshold"]) > 0
        # The worker's consumers start a new group at the earliest offset.
        assert meta.get("offsetResetPolicy") == "earliest"
        _check_kafka_security(rendered, trigger)
    assert sorted(topics) == sorted(inputs)  # every input topic, once


def _check_kafka_security(rendered: Rendered, trigger: Object) -> None:
    """KEDA's words for the worker's KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_MECHANISM, and
    its credentials from the same Secret keys as the worker's."""
    given = {
        name.removeprefix("KAFKA_").lower(): value
        for name, value in rendered.settings.items()
        if name in setting_names(KafkaSecuritySettings)
    }
    stand_ins = {"sasl_username": "from-the-secret", "sasl_password": "from-the-secret"}
    security = KafkaSecurity.model_validate(stand_ins | given)
    meta = trigger["metadata"]
    sasl = KEDA_SASL[security.sasl_mechanism] if security.sasl else "none"
    assert meta.get("sasl", "none") == sasl
    assert meta.get("tls", "disable") == ("enable" if security.tls else "disable")
    if not security.sasl:
        return
    auth = rendered.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    worker = {
        v["name"]: (v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
        for v in rendered.worker_container.get("env", [])
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert refs["username"] == worker["KAFKA_SASL_USERNAME"]
    assert refs["password"] == worker["KAFKA_SASL_PASSWORD"]


def test_replicas_stay_within_the_partitions(rendered: Rendered) -> None:
    partitions = int(rendered.setting("LLMFLOW_TOPIC_PARTITIONS"))
    (scaled,) = rendered.of_kind("ScaledObject")
    # A worker beyond the partition count of a topic would get none of it.
    assert scaled["spec"]["maxReplicaCount"] == partitions
    assert 1 <= scaled["spec"]["minReplicaCount"] <= partitions
    assert rendered.worker["spec"].get("replicas", 1) <= partitions


def test_a_pod_runs_one_worker_process(rendered: Rendered) -> None:
    """Pods are what scales: a pod sees all of its node's cores, so the default (a process
    per usable CPU) would put several group members in each, past what KEDA counts."""
    assert rendered.settings["LLMFLOW_PROCESSES"] == "1"


# --- settings, probes, ports ----------------------------------------------------------------


def test_every_variable_is_a_setting_and_the_values_parse(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in rendered.workloads():
        for container in pod_spec(workload)["containers"]:  # type: ignore[index]
            if _command(workload)[0] != "llmflow":
                assert "env" not in container and "envFrom" not in container
                continue
            named = {v["name"] for v in container.get("env", [])}
            env = rendered.environment(container)
            assert set(env) | named <= SETTINGS, (set(env) | named) - SETTINGS
            # The values are ones the worker accepts (secrets: stand-ins).
            for name in SETTINGS:
                monkeypatch.delenv(name, raising=False)
            for name in named - set(env):
                monkeypatch.setenv(name, "from-the-secret")
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            Settings()
            KafkaSecuritySettings()


def test_secrets_come_only_from_secret_references(rendered: Rendered) -> None:
    assert {"OPENAI_API_KEY", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD"} <= SECRETS
    assert not rendered.of_kind("Secret")
    for config_map in rendered.of_kind("ConfigMap"):
        assert not SECRETS & set(config_map["data"]), config_map["metadata"]["name"]
    for workload in rendered.workloads():
        for container in pod_spec(workload)["containers"]:  # type: ignore[index]
            for variable in container.get("env", []):
                if variable["name"] in SECRETS:
                    assert set(variable) == {"name", "valueFrom"}, variable["name"]
                    assert set(variable["valueFrom"]) == {"secretKeyRef"}, variable["name"]
    # The worker gets the model key and, with SASL, the Kafka password.
    names = {v["name"] for v in rendered.worker_container["env"]}
    assert {"OPENAI_API_KEY", "KAFKA_SASL_PASSWORD"} <= names


def test_probes_ask_the_worker_paths_on_its_metrics_port(rendered: Rendered) -> None:
    routes = {
        r.resource.canonical
        for r in health_app(Metrics().registry, Readiness()).router.routes()
        if r.resource
    }
    container = rendered.worker_container
    port = int(rendered.setting("LLMFLOW_METRICS_PORT"))
    assert rendered.setting("LLMFLOW_METRICS_HOST") == "0.0.0.0"  # reachable from the kubelet
    probes = dict(_probes(container))
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["path"] in routes
        assert _port(container, probe["port"]) == port
    # The Service and the ServiceMonitor reach the same port and the metrics path.
    service = rendered.one("Service", rendered.worker["metadata"]["name"])
    (service_port,) = service["spec"]["ports"]
    assert _port(container, service_port["targetPort"]) == port
    (monitor,) = rendered.of_kind("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"]
    assert endpoint.get("path", "/metrics") in routes


def test_the_gateway_probes_its_own_routes_and_takes_its_tokens_from_the_secret(
    rendered: Rendered,
) -> None:
    (gateway,) = [w for w in rendered.workloads() if _command(w)[1][:1] == ["gateway"]]
    args = _parse(gateway)
    assert args.host == "0.0.0.0"
    (container,) = pod_spec(gateway)["containers"]  # type: ignore[index]
    app = make_gateway_app()
    routes = {r.resource.canonical for r in app.router.routes() if r.resource}
    probes = dict(_probes(container))
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for probe in probes.values():
        assert probe["path"] in routes and _port(container, probe["port"]) == args.port
    (tokens,) = [v for v in container["env"] if v["name"] == "LLMFLOW_GATEWAY_TOKENS"]
    assert set(tokens["valueFrom"]) == {"secretKeyRef"}
    service = rendered.one("Service", gateway["metadata"]["name"])
    (service_port,) = service["spec"]["ports"]
    assert _port(container, service_port["targetPort"]) == args.port


def make_gateway_app() -> Any:
    from llmflow.services.gateway.app import make_app as gateway_app

    settings = GatewaySettings(insecure_no_auth=True)
    return gateway_app(Gateway(settings, [], Authenticator([], open_access=True)))


def test_the_simulator_probes_its_own_routes(example: Rendered) -> None:
    routes = {
        r.resource.canonical for r in make_app(SimulatorConfig()).router.routes() if r.resource
    }
    simulators = [w for w in example.workloads() if _command(w)[0] == "llmflow-modelsim"]
    assert len(simulators) == 1
    (simulator,) = simulators
    assert "simulator" in simulator["metadata"]["labels"]["app.kubernetes.io/component"]
    (container,) = simulator["spec"]["template"]["spec"]["containers"]
    args = _parse(simulator)
    assert args.host == "0.0.0.0"
    for _, probe in _probes(container):
        assert probe["path"] in routes and _port(container, probe["port"]) == args.port
    # The workers' endpoint is the simulator's Service.
    (service,) = [s for s in example.of_kind("Service") if "simulator" in str(s["metadata"])]
    url = example.settings["OPENAI_BASE_URL"]
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/v1"


def test_every_command_parses(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        _parse(workload)  # argparse exits on an unknown flag
    job_args = [_command(j)[1] for j in rendered.of_kind("Job")]
    if rendered.path == "overlays/example":
        assert job_args == [["orgdata", "load", "--samples"]]


# --- shutdown, security, labels -------------------------------------------------------------


def test_the_grace_period_outlasts_the_drain(rendered: Rendered) -> None:
    grace = rendered.worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(rendered.setting("LLMFLOW_DRAIN_TIMEOUT_S"))


def test_pods_run_as_the_image_user_on_a_read_only_root(rendered: Rendered) -> None:
    dockerfile = (PROJECT_ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+)$", dockerfile, re.M)
    assert user is not None
    for workload in rendered.workloads():
        spec = pod_spec(workload)
        assert spec is not None
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == int(user.group(1))
        assert spec.get("automountServiceAccountToken") is False
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            writable = {
                m["mountPath"]
                for m in container.get("volumeMounts", [])
                if "emptyDir" in volumes[m["name"]]
            }
            assert "/tmp" in writable
            if _command(workload)[0] == "llmflow":
                data_dir = rendered.environment(container).get("LLMFLOW_DATA_DIR", "/data")
                assert data_dir in writable  # the image's LLMFLOW_DATA_DIR is /data
            assert container["resources"]["requests"] and container["resources"]["limits"]


def test_labels_match_selectors(rendered: Rendered) -> None:
    workloads = rendered.workloads()
    for workload in rendered.of_kind("Deployment"):
        assert _selects(workload["spec"]["selector"]["matchLabels"], _pod_labels(workload))

    def selected(selector: dict[str, str]) -> list[str]:
        return [w["metadata"]["name"] for w in workloads if _selects(selector, _pod_labels(w))]

    # Each Service fronts the pods of one workload; the worker's PDB guards only workers.
    for service in rendered.of_kind("Service"):
        assert len(selected(service["spec"]["selector"])) == 1, service["metadata"]["name"]
    worker = rendered.worker["metadata"]["name"]
    assert selected(rendered.one("Service", worker)["spec"]["selector"]) == [worker]
    (budget,) = rendered.of_kind("PodDisruptionBudget")
    assert selected(budget["spec"]["selector"]["matchLabels"]) == [worker]
    (monitor,) = rendered.of_kind("ServiceMonitor")
    services = [
        s["metadata"]["name"]
        for s in rendered.of_kind("Service")
        if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert services == [worker]


def test_only_an_overlay_names_the_namespace(rendered: Rendered) -> None:
    namespaces = {o["metadata"].get("namespace") for o in rendered.objects}
    assert namespaces == ({None} if rendered.path == "base" else {"llmflow"})


# --- schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(rendered: Rendered, version: str) -> None:
    core = [o for o in rendered.objects if o["apiVersion"] in CORE_API_GROUPS]
    kinds = {o["kind"] for o in core}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds
    for obj in core:
        kubernetes_validate.validate(obj, version, strict=True)


def test_custom_resources_have_the_shape_their_operators_read(rendered: Rendered) -> None:
    """ScaledObject and TriggerAuthentication (KEDA), ServiceMonitor (Prometheus Operator):
    no schema ships offline for these, so their fields are checked here."""
    (scaled,) = rendered.of_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert isinstance(spec["minReplicaCount"], int) and isinstance(spec["maxReplicaCount"], int)
    for trigger in spec["triggers"]:
        assert set(trigger) <= {"type", "metadata", "authenticationRef", "name", "metricType"}
        # KEDA's trigger metadata is a map of strings: a YAML number there is refused.
        assert all(isinstance(v, str) for v in trigger["metadata"].values()), trigger
    (auth,) = rendered.of_kind("TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    kafka_parameters = {"sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword"}
    for ref in auth["spec"]["secretTargetRef"]:
        assert set(ref) == {"parameter", "name", "key"} and ref["parameter"] in kafka_parameters
    (monitor,) = rendered.of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
