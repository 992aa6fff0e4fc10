from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmflow.services.worker.budgets import SpendView, period_key, spend_key


def test_periods() -> None:
    when = datetime(2026, 11, 27, 13, 5, tzinfo=UTC)
    assert period_key("hour", when) == "2026-11-27T13"
    assert period_key("day", when) == "2026-11-27"
    assert period_key("month", when) == "2026-11"


def test_spend_view_sums_latest_partials_per_partition() -> None:
    view = SpendView()
    view.set_partial(spend_key("acme", "2026-11-27", 0), 1.0)
    view.set_partial(spend_key("acme", "2026-11-27", 1), 2.0)
    view.set_partial(spend_key("acme", "2026-11-27", 0), 1.5)  # a newer total replaces the old
    view.set_partial(spend_key("other|co", "2026-11-27", 0), 9.0)  # tenants may contain "|"
    assert view.total("acme", "2026-11-27") == pytest.approx(3.5)
    assert view.total("other|co", "2026-11-27") == 9.0
    assert view.total("acme", "2026-11-26") == 0.0


def test_a_total_never_falls_back_to_an_older_record() -> None:
    view = SpendView()
    key = spend_key("acme", "2026-11-27", 0)
    view.set_partial(key, 2.0)  # this worker's own charge, counted at once
    view.set_partial(key, 1.5)  # its earlier flush, read back from the changelog
    assert view.total("acme", "2026-11-27") == 2.0
    view.set_partial(key, 2.5)
    assert view.total("acme", "2026-11-27") == 2.5
