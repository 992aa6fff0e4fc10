"""`llmflow_consumer_lag` per partition, and the bounded labels of the worker's metrics."""

from __future__ import annotations

from typing import Any

from faust.types import TP
from prometheus_client import generate_latest

from llmflow.services.worker.commits import floors
from llmflow.services.worker.lag import partition_lags
from llmflow.services.worker.metrics import Metrics

IN0, IN1, IN2 = TP("support.tickets", 0), TP("support.tickets", 1), TP("support.tickets", 2)


class FakeConsumer:
    def __init__(self, ends: dict[TP, int | None], revoked: frozenset[TP] = frozenset()) -> None:
        self.ends = ends
        self.revoked = revoked
        self._committed_offset: dict[TP, int | None] = {}

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int | None:
        if tp in self.revoked:
            raise RuntimeError("no longer assigned")
        return self.ends[tp]


def test_lag_is_the_end_minus_the_commit_of_each_partition() -> None:
    consumer = FakeConsumer({IN0: 120, IN1: None, IN2: 50})
    floors(consumer).update({IN0: 100, IN1: 7, IN2: 50})
    assert partition_lags(consumer) == {IN0: 20, IN2: 0}  # IN1: nothing fetched yet


def test_the_last_commit_wins_over_the_floor_read_back() -> None:
    consumer = FakeConsumer({IN0: 120})
    floors(consumer)[IN0] = 100
    consumer._committed_offset = {IN0: 118}
    assert partition_lags(consumer) == {IN0: 2}


def test_partitions_without_a_commit_or_gone_meanwhile_are_left_out() -> None:
    consumer = FakeConsumer({IN0: 10, IN1: 10}, revoked=frozenset({IN1}))
    floors(consumer)[IN1] = 3
    assert partition_lags(consumer) == {}


def test_a_consumer_between_generations_reports_no_partitions() -> None:
    class Broken:
        def assignment(self) -> Any:
            raise RuntimeError("consumer not started")

    assert partition_lags(Broken()) == {}


def test_the_series_appear_in_the_exposition() -> None:
    consumer = FakeConsumer({IN0: 120, IN2: 51})
    floors(consumer).update({IN0: 100, IN2: 50})
    metrics = Metrics()
    holder: dict[str, Any] = {"consumer": None}
    metrics.lag.follow(lambda: holder["consumer"])
    assert "llmflow_consumer_lag{" not in generate_latest(metrics.registry).decode()
    holder["consumer"] = consumer
    text = generate_latest(metrics.registry).decode()
    assert 'llmflow_consumer_lag{partition="0",topic="support.tickets"} 20.0' in text
    assert 'llmflow_consumer_lag{partition="2",topic="support.tickets"} 1.0' in text


def test_process_metrics_are_exported() -> None:
    text = generate_latest(Metrics().registry).decode()
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info"):
        assert f"\n{name}" in text


def test_tenants_not_configured_share_one_label() -> None:
    metrics = Metrics(tenants={"acme"})
    assert metrics.tenant("acme") == "acme"
    assert {metrics.tenant(f"C-{n}") for n in range(1000)} == {"other"}


def test_cost_is_labelled_by_configured_tenant_or_other() -> None:
    from llmflow.services.worker import app as app_module
    from tests.unit.worker.test_projection import _output

    named, unnamed = Metrics(tenants={"acme"}), Metrics()
    output = _output()  # tenant acme; its two calls were paid, the retrieval embedding reused
    paid = [call.model_copy(update={"cost_usd": 0.25}) for call in output.calls]
    output = output.model_copy(update={"calls": paid})
    for metrics in (named, unnamed):
        app_module._count(metrics, "support_triage", output, record_timestamp=0.0)
    assert named.cost.labels("gpt-4o-mini", "acme")._value.get() == 0.5
    assert unnamed.cost.labels("gpt-4o-mini", "other")._value.get() == 0.5
    text = generate_latest(unnamed.registry).decode()
    assert 'tenant="acme"' not in text
    assert named.models.calls.labels("gpt-4o-mini", "default", "reused")._value.get() == 1
