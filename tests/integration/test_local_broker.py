"""The local broker launcher on its own."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from llmflow.services.broker import local

pytestmark = pytest.mark.integration


def test_cluster_id_starting_with_a_dash_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Random ids are URL-safe base64, so one in 64 starts with "-".
    monkeypatch.setattr(local, "_cluster_id", lambda: "-AbCdEfGhIjKlMnOpQrStU")
    with local.LocalKafka(tmp_path / "kafka") as broker:
        assert local.broker_answers(broker.bootstrap_servers)


def _read_all(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[bytes]:
    """Every record of partition 0 of `topic`, from the beginning."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        values: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not values:
            for records in consumer.poll(timeout_ms=500).values():
                values += [record.value for record in records]
        return values
    finally:
        consumer.close()


def test_restart_on_the_same_folder_keeps_address_and_records(tmp_path: Path) -> None:
    data = tmp_path / "kafka"
    with local.LocalKafka(data) as first:
        bootstrap = first.bootstrap_servers
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        try:
            producer.send("restart.check", b"kept", partition=0).get(timeout=30)
        finally:
            producer.close()
    state = json.loads((data / local.STATE_FILE).read_text())
    assert bootstrap == f"127.0.0.1:{state['port']}"
    assert not local.broker_answers(bootstrap)

    # A new launcher, as a second `llmflow kafka start --data-dir` would make.
    with local.LocalKafka(data) as second:
        assert second.bootstrap_servers == bootstrap
        assert _read_all(bootstrap, "restart.check") == [b"kept"]
    assert json.loads((data / local.STATE_FILE).read_text()) == state
    assert "Invalid cluster.id" not in (data / "broker.log").read_text(errors="replace")


def test_restart_with_another_port_is_refused(tmp_path: Path) -> None:
    """Checked before any JVM starts: the folder's kept port wins over a different one."""
    data = tmp_path / "kafka"
    data.mkdir()
    local.BrokerState("AbCdEfGhIjKlMnOpQrStUw", 19092, 19093).write(data / local.STATE_FILE)
    with pytest.raises(local.BrokerError, match=r"holds a broker on port 19092.*another data"):
        local.LocalKafka(data, port=19094).start()
    (data / local.STATE_FILE).write_text("{")
    with pytest.raises(local.BrokerError, match=r"llmflow-broker\.json is damaged"):
        local.LocalKafka(data).start()


@pytest.mark.skipif(shutil.which("mvn") is None, reason="needs Maven")
def test_fetch_from_an_installed_layout_puts_jars_where_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, project_root: Path
) -> None:
    """Real Maven: `-DoutputDirectory` overrides the pom's `lib/`, and nothing (no `lib/`,
    no `target/`) is written beside the shipped pom. Seconds once ~/.m2 holds the jars."""
    kafka = tmp_path / "site-packages" / "llmflow" / "services" / "broker" / "kafka"
    kafka.mkdir(parents=True)
    for name in ("pom.xml", "log4j2.properties"):
        shutil.copyfile(project_root / "deploy" / "kafka" / name, kafka / name)
    monkeypatch.setattr(local, "KAFKA_DIR", kafka)
    monkeypatch.setenv(local.LIB_ENV, str(tmp_path / "jars"))
    assert local.fetch_kafka() == tmp_path / "jars"
    assert list((tmp_path / "jars").glob("kafka_2.13-4.*.jar"))
    assert sorted(p.name for p in kafka.iterdir()) == ["log4j2.properties", "pom.xml"]
