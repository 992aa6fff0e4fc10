"""The local broker launcher on its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmflow.services.broker import local

pytestmark = pytest.mark.integration


def test_cluster_id_starting_with_a_dash_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Random ids are URL-safe base64, so one in 64 starts with "-".
    monkeypatch.setattr(local, "_cluster_id", lambda: "-AbCdEfGhIjKlMnOpQrStU")
    with local.LocalKafka(tmp_path / "kafka") as broker:
        assert local.broker_answers(broker.bootstrap_servers)


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
