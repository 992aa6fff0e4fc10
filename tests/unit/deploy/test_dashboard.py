"""The Grafana dashboard asks only for metrics a worker exports, and shows what an operator
of llmflow looks at first."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from llmflow.services.worker.metrics import Metrics
from tests.conftest import PROJECT_ROOT

DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "llmflow.json"
# The samples a metric family of each type exposes (prometheus_client's names).
SUFFIXES = {
    "counter": ["_total", "_created"],
    "histogram": ["_bucket", "_sum", "_count", "_created"],
    "summary": ["", "_sum", "_count", "_created"],
    "gauge": [""],
    "info": ["_info"],
    "stateset": [""],
    "unknown": [""],
}
# Names a worker's metrics define; Prometheus' own (`up`) and functions are not matched.
OURS = re.compile(r"\b(?:llmflow|process)_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]


def exported_names() -> set[str]:
    """Every sample name a fresh worker registry can expose: counters get `_total`,
    histograms `_bucket`/`_sum`/`_count` (from `registry.collect()`, by type, since a
    labelled metric has no samples until it is used)."""
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
        names |= {sample.name for sample in family.samples}
    return names


def test_every_metric_the_dashboard_asks_for_is_exported(dashboard: dict[str, Any]) -> None:
    wanted = {name for expr in _exprs(dashboard) for name in OURS.findall(expr)}
    missing = sorted(wanted - exported_names())
    assert missing == [], f"not in Metrics().registry: {missing}"


def test_the_dashboard_shows_what_operators_look_at(dashboard: dict[str, Any]) -> None:
    wanted = {name for expr in _exprs(dashboard) for name in OURS.findall(expr)}
    assert {
        "llmflow_events_in_total",
        "llmflow_outputs_total",
        "llmflow_dead_letters_total",
        "llmflow_consumer_lag",
        "llmflow_in_flight_events",
        "llmflow_event_seconds_bucket",
        "llmflow_model_call_seconds_bucket",
        "llmflow_model_calls_total",
        "llmflow_model_attempts_total",
        "llmflow_tokens_total",
        "llmflow_cost_usd_total",
        "llmflow_topology_paused",
        "process_resident_memory_bytes",
    } <= wanted
    exprs = _exprs(dashboard)
    for quantile in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({quantile}, ") for e in exprs), quantile
    # Summed by the label the panel's title names.
    for metric, label in [
        ("llmflow_dead_letters_total", "stage"),
        ("llmflow_consumer_lag", "topic"),
        ("llmflow_cost_usd_total", "model"),
        ("llmflow_cost_usd_total", "tenant"),
        ("llmflow_model_calls_total", "model"),
        ("llmflow_model_attempts_total", "model"),
    ]:
        grouped = rf"sum by \([^)]*\b{label}\b[^)]*\) \(.*\b{metric}\b"
        assert any(re.search(grouped, e) for e in exprs), (metric, label)


def test_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    """Unique ids, each query on the dashboard's data source variable, quantiles over
    buckets summed by `le`, and rates over Grafana's rate interval."""
    (variable,) = dashboard["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == f"${{{variable['name']}}}", panel["title"]
        assert panel["gridPos"]["w"] > 0 and panel["gridPos"]["h"] > 0
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            if expr.startswith("histogram_quantile("):
                assert "_bucket[" in expr and re.search(r"by \(le\b", expr), expr
            for window in re.findall(r"\[([^\]]+)\]", expr):
                assert window == "$__rate_interval", expr
