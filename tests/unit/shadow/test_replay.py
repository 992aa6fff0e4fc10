"""The parts of a replay that need no broker: names, budgets, committable offsets and the
progress it reports."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest

from llmflow.services.shadow.replay import (
    Progress,
    ReplayOptions,
    ShadowBudgets,
    _Offsets,
    replay_group,
    shadow_topic,
)
from llmflow.services.worker.budgets import Budget, SpendView, period_key
from llmflow.services.worker.ports import OverBudget
from llmflow.topologies import Topology
from llmflow.topologies.loader import load_topology
from tests.unit.shadow.helpers import TOPOLOGY

LEGAL_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(TOPOLOGY)


# --- names --------------------------------------------------------------------------------


def test_shadow_topic(topology: Topology) -> None:
    assert shadow_topic(topology) == "support.triaged.shadow.2.0.1"


def test_shadow_topic_makes_the_version_a_legal_name(topology: Topology) -> None:
    candidate = topology.model_copy(update={"version": "2.1.0+exp/b 7"})
    topic = shadow_topic(candidate)
    assert topic.startswith("support.triaged.shadow.2.1.0_exp_b_7-")
    assert LEGAL_TOPIC.match(topic)
    assert topic not in {topology.output_topic, topology.input_topic, topology.dead_letter_topic}
    # Versions that read alike once made legal still get topics of their own.
    alike = topology.model_copy(update={"version": "2.1.0_exp_b_7"})
    assert shadow_topic(alike) == "support.triaged.shadow.2.1.0_exp_b_7" != topic


def test_replay_group(topology: Topology) -> None:
    assert replay_group(topology) == "llmflow-replay.support_triage.2.0.1.all"
    candidate = topology.model_copy(update={"version": "3+rc1"})
    assert replay_group(candidate).startswith("llmflow-replay.support_triage.3_rc1-")
    assert replay_group(candidate) != replay_group(topology)
    alike = topology.model_copy(update={"version": "3_rc1"})
    assert replay_group(alike) != replay_group(candidate)


def test_each_range_is_a_replay_of_its_own(topology: Topology) -> None:
    """A run of the same range goes on where the last stopped; another range starts anew
    (the committed offsets of one range mean nothing for another)."""
    narrow = ReplayOptions(offsets={0: (10, 20)})
    wide = ReplayOptions(offsets={0: (0, 20)})
    by_time = ReplayOptions(start=datetime(2026, 11, 20, tzinfo=UTC))
    later = ReplayOptions(start=datetime(2026, 11, 21, tzinfo=UTC))
    groups = {replay_group(topology, o) for o in (narrow, wide, by_time, later)}
    assert len(groups) == 4
    assert replay_group(topology, ReplayOptions(offsets={0: (10, 20)})) == replay_group(
        topology, narrow
    )


# --- budgets ------------------------------------------------------------------------------


def _this_month() -> str:
    return period_key("month", datetime.now(UTC))


def test_tenant_budget_counts_live_and_shadow_spend() -> None:
    period = _this_month()
    live = SpendView()
    live.set_partial(f"acme|{period}|0", 0.5)
    live.set_partial(f"acme|{period}|1", 0.25)
    live.set_partial("acme|2000-01|0", 100.0)  # another period
    live.set_partial(f"other|{period}|0", 100.0)  # another tenant
    budgets = ShadowBudgets({"acme": Budget(usd=1.0, period="month")}, live, None)
    assert budgets.over_budget("acme") is None

    budgets.charge("acme", 0.125)
    assert budgets.over_budget("acme") is None
    budgets.charge("acme", 0.125)  # live 0.75 + shadow 0.25 reaches the budget
    assert budgets.over_budget("acme") == OverBudget(period, 1.0, 1.0)


def test_tenant_budget_follows_the_live_view() -> None:
    period = _this_month()
    live = SpendView()
    budgets = ShadowBudgets({"acme": Budget(usd=2.0, period="month")}, live, None)
    budgets.charge("acme", 0.5)
    live.set_partial(f"acme|{period}|0", 1.0)
    assert budgets.over_budget("acme") is None
    live.set_partial(f"acme|{period}|0", 1.5)  # the partition's total, not an increment
    assert budgets.over_budget("acme") == OverBudget(period, 2.0, 2.0)


def test_tenants_without_a_budget_are_never_over() -> None:
    live = SpendView()
    live.set_partial(f"nobody|{_this_month()}|0", 1e6)
    budgets = ShadowBudgets({}, live, None)
    budgets.charge("nobody", 1e6)
    assert budgets.over_budget("nobody") is None
    assert budgets.spent == 1e6


def test_replay_cap() -> None:
    budgets = ShadowBudgets({"acme": Budget(usd=100.0)}, SpendView(), max_usd=0.5)
    assert not budgets.exhausted
    budgets.charge("acme", 0.25)
    budgets.charge("someone", 0.125)  # any tenant's spend counts towards the cap
    assert budgets.spent == 0.375 and not budgets.exhausted
    budgets.charge("acme", 0.125)
    assert budgets.exhausted  # spent == max_usd


def test_a_zero_cap_is_exhausted_at_once() -> None:
    assert ShadowBudgets({}, SpendView(), max_usd=0.0).exhausted


def test_no_cap() -> None:
    budgets = ShadowBudgets({}, SpendView(), max_usd=None)
    budgets.charge("acme", 1e9)
    assert not budgets.exhausted


# --- committable offsets ------------------------------------------------------------------


def test_committable_is_the_oldest_event_in_flight() -> None:
    offsets = _Offsets()
    assert offsets.committable() == {}
    for offset in (10, 11, 12):
        offsets.take(0, offset)
    offsets.take(1, 3)
    assert offsets.committable() == {0: 10, 1: 3}
    offsets.finish(0, 11)
    assert offsets.committable() == {0: 10, 1: 3}
    offsets.finish(0, 10)
    assert offsets.committable() == {0: 12, 1: 3}


def test_committable_is_one_past_the_last_event_taken_when_none_is_in_flight() -> None:
    offsets = _Offsets()
    offsets.take(0, 10)
    offsets.take(0, 15)  # offsets may have gaps
    offsets.finish(0, 15)
    offsets.finish(0, 10)
    assert offsets.committable() == {0: 16}
    offsets.take(0, 20)
    assert offsets.committable() == {0: 20}


# --- progress -----------------------------------------------------------------------------


def _progress(**figures: int | float) -> Progress:
    progress = Progress("support_triage", "2.0.0", "support.triaged.shadow.2.0.0")
    for name, value in figures.items():
        setattr(progress, name, value)
    return progress


def test_progress_line() -> None:
    progress = _progress(
        total=10, done=4, resumed=1, outputs=2, dead_letters=1, calls_paid=5, cost_usd=0.0123
    )
    progress.started = time.monotonic() - 3.0  # 3 events in 3 s this run
    assert progress.line() == (
        "replay support_triage v2.0.0: 4/10 events (40%), 2 outputs, 1 dead letters, "
        "0 parked, 5 calls paid, $0.012300 (shadow), 1.0 events/s, about 6 s left"
    )


def test_progress_line_without_a_rate_or_anything_left() -> None:
    assert _progress().line().startswith("replay support_triage v2.0.0: 0/0 events (100%), ")
    assert _progress().line().endswith(", 0.0 events/s")
    finished = _progress(total=4, done=4)
    finished.started = time.monotonic() - 1.0
    line = finished.line()
    assert "4/4 events (100%)" in line and "left" not in line
    resumed_only = _progress(total=4, done=2, resumed=2)
    assert resumed_only.line().endswith(", 0.0 events/s")


def test_progress_summary() -> None:
    progress = _progress(total=3, done=3, outputs=3, calls_paid=2, calls_reused=1)
    progress.cost_usd = 0.1 + 0.2
    progress.stopped = "budget"
    progress.started = time.monotonic() - 2.0
    summary = progress.summary()
    assert set(summary) == {
        "topology",
        "version",
        "shadow_topic",
        "total",
        "done",
        "resumed",
        "outputs",
        "dead_letters",
        "parked",
        "calls_paid",
        "calls_reused",
        "cost_usd",
        "stopped",
        "seconds",
    }
    assert summary["cost_usd"] == 0.3
    assert summary["seconds"] == pytest.approx(2.0, abs=0.5)
    assert summary["shadow_topic"] == "support.triaged.shadow.2.0.0"
    assert (summary["done"], summary["calls_reused"], summary["stopped"]) == (3, 1, "budget")
