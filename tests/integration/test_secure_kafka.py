"""A broker that takes SASL_SSL only (SCRAM-SHA-512 users, a throw-away CA): events go
produce -> worker -> consume over it with the KAFKA_* settings alone, and a wrong password
stops each command within seconds with one line naming the setting to fix."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from dev import launch
from dev.launch import Child
from llmflow.schemas.outputs import Output
from llmflow.services.broker.certs import BrokerCertificates
from llmflow.services.broker.local import LocalKafka
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event
from llmflow.services.worker.orgdata import publish_samples
from llmflow.services.worker.preflight import broker_problem
from llmflow.services.worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    with LocalKafka(tmp_path_factory.mktemp("secure-kafka"), secure=True) as broker:
        yield broker


@pytest.fixture
def secure_env(secure_broker: LocalKafka, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The broker's variables, in this process too (the SDK reads them where it connects)."""
    env = secure_broker.environment()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _llmflow(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "llmflow.services.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, time.monotonic() - started


def test_events_flow_over_sasl_ssl(
    secure_env: dict[str, str],
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    workers: Callable[..., Child],
) -> None:
    servers = secure_env["KAFKA_BOOTSTRAP_SERVERS"]
    sim = modelsim()
    prefix = f"secure.{uuid.uuid4().hex[:6]}."
    publish_samples(
        Settings(
            kafka_bootstrap_servers=servers,
            openai_base_url=sim.extra["base_url"],
            orgdata_topic_prefix=prefix,
        )
    )
    path = topology_copy("support_triage")
    spec = yaml.safe_load(path.read_text())
    env = secure_env | launch.worker_env(
        servers,
        sim.extra["base_url"],
        f"secure-{uuid.uuid4().hex[:6]}",
        orgdata_topic_prefix=prefix,
    )
    worker = workers([path], env)

    with EventProducer(servers) as producer:
        for n in range(20):
            event = text_event(f"Ticket {n}: charged twice", key="C-1001", event_id=f"s-{n}")
            producer.send(spec["input_topic"], event)
    topics = [spec["output_topic"], spec["dead_letter_topic"]]
    with ResultConsumer(servers, topics) as consumer:
        results = list(consumer.results(idle_timeout_s=60, limit=20))
    assert worker.alive(), worker.log_tail()
    assert len(results) == 20, worker.log_tail()
    outputs = [r for r in results if isinstance(r, Output)]
    assert sorted(o.event_id for o in outputs) == sorted(f"s-{n}" for n in range(20))
    assert all(o.org_record is not None and o.org_record.key == "C-1001" for o in outputs)

    # The command line reaches it with the same variables.
    done, _ = _llmflow(secure_env, "consume", spec["output_topic"], "--max", "1")
    assert done.returncode == 0, done.stderr
    assert "s-" in done.stdout

    # The listener takes no plaintext client.
    plain = {**secure_env, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}
    done, _ = _llmflow(plain, "consume", spec["output_topic"], "--max", "1")
    assert done.returncode != 0
    assert "KAFKA_SECURITY_PROTOCOL" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("produce", "--topic", "secure.refused", "--key", "k", "--text", "hello"),
        ("consume", "secure.refused", "--max", "1"),
        ("worker", "--topology", "topologies/support_triage.yaml"),
    ],
    ids=["produce", "consume", "worker"],
)
def test_wrong_password_fails_fast_with_one_line(
    secure_env: dict[str, str], args: tuple[str, ...], modelsim: Callable[..., Child]
) -> None:
    sim = modelsim()  # the worker checks its model endpoint too: only Kafka is wrong here
    wrong = secure_env | {
        "KAFKA_SASL_PASSWORD": "not-the-password",
        "OPENAI_BASE_URL": sim.extra["base_url"],
    }
    done, seconds = _llmflow(wrong, *args)
    assert done.returncode != 0
    assert seconds < 10, f"{seconds:.1f} s"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "KAFKA_SASL_PASSWORD" in lines[0] and "refused the login" in lines[0]
    assert "not-the-password" not in done.stderr


def test_login_problems_name_the_setting(
    secure_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = secure_env["KAFKA_BOOTSTRAP_SERVERS"]
    assert broker_problem(servers) is None
    stranger = BrokerCertificates(tmp_path / "ca.pem", tmp_path / "other.pem").create()
    cases = {
        "KAFKA_SSL_CA_LOCATION": str(stranger.ca),
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",  # no user has SHA-256 credentials
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "KAFKA_SASL_USERNAME": "nobody",
    }
    for setting, value in cases.items():
        with monkeypatch.context() as changed:
            changed.setenv(setting, value)
            started = time.monotonic()
            problem = broker_problem(servers)
            assert time.monotonic() - started < 10
        assert problem is not None and setting in problem, (setting, problem)


@pytest.mark.parametrize(
    ("tls", "setting"),
    [
        ({"KAFKA_SSL_CA_LOCATION": "junk"}, "KAFKA_SSL_CA_LOCATION="),
        (
            {"KAFKA_SSL_CERTIFICATE_LOCATION": "cert", "KAFKA_SSL_KEY_LOCATION": "encrypted"},
            "set KAFKA_SSL_KEY_PASSWORD",
        ),
    ],
    ids=["ca-not-pem", "key-encrypted-no-password"],
)
def test_unusable_tls_files_fail_fast_with_one_line(
    secure_env: dict[str, str], tmp_path: Path, tls: dict[str, str], setting: str
) -> None:
    """Not "is it a TLS listener?", and no OpenSSL prompt for a pass phrase."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    certs = BrokerCertificates.in_folder(tmp_path).create()  # any certificate and its key
    key = serialization.load_pem_private_key(certs.keystore.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    files = {
        "junk": tmp_path / "junk.pem",
        "cert": certs.keystore,
        "encrypted": tmp_path / "encrypted.pem",
    }
    files["junk"].write_text("not a certificate\n")
    files["encrypted"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    env = secure_env | {name: str(files[label]) for name, label in tls.items()}
    done, seconds = _llmflow(env, "consume", "secure.tls", "--max", "1")
    assert done.returncode != 0 and seconds < 10, (done.returncode, seconds)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and setting in lines[0], done.stderr
    assert "pass phrase" not in done.stderr.lower()
