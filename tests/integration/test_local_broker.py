"""The local broker launcher on its own."""

from __future__ import annotations

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
