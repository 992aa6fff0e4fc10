"""The worker's metric names follow Prometheus' conventions, and `promtool check metrics`
finds nothing in them where promtool is installed (`go install
github.com/prometheus/prometheus/cmd/promtool@v0.316.0`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric

from llmflow.services.worker.metrics import Metrics

UNITS = ("_seconds", "_bytes", "_ratio", "_usd", "_events", "_lag", "_paused")


def _families() -> list[Metric]:
    return [m for m in Metrics().registry.collect() if m.name.startswith("llmflow_")]


def test_names_say_their_type_and_unit() -> None:
    families = _families()
    assert len(families) > 15
    for family in families:
        assert re.fullmatch(r"llmflow_[a-z0-9_]+", family.name), family.name
        assert "total" not in family.name, f"{family.name}: counters get _total on export"
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if family.type == "gauge":
            assert family.name.endswith(UNITS), f"{family.name}: a gauge names what it holds"


def _promtool() -> str | None:
    found = shutil.which("promtool")
    home = Path.home() / "go" / "bin" / "promtool"
    return found or (str(home) if home.is_file() else None)


@pytest.mark.skipif(_promtool() is None, reason="promtool is not installed")
def test_promtool_finds_nothing() -> None:
    metrics = Metrics(tenants={"acme"})
    metrics.events_in.labels("t").inc()
    metrics.cost.labels("gpt-4o-mini", metrics.tenant("acme")).inc(0.1)
    metrics.models.calls.labels("m", "default", "ok").inc()
    metrics.models.attempts.labels("m", "default", "http_429").inc()
    metrics.event_seconds.labels("t").observe(0.3)
    text = generate_latest(metrics.registry)
    done = subprocess.run(
        [str(_promtool()), "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
