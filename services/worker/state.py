"""Worker state in faust tables: changelogged to Kafka, co-partitioned with the input.

Each table is written only while processing an event of the partition it belongs to, so
the owner of a partition is the only writer of its part, and a worker that takes the
partition over (rebalance, crash) recovers that part before it processes any event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from faust.streams import current_event

from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.worker.budgets import Budget, SpendView, period_key, spend_key
from llmflow.services.worker.ports import OverBudget


class TablePaidCalls:
    """Answers by call id, in a windowed table (windows follow the record's timestamp,
    so a redelivered record finds what its first delivery stored)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, call_id: str) -> ModelCallResult | None:
        if call_id not in self._table:
            return None
        return ModelCallResult.model_validate(self._table[call_id].current())

    def put(self, result: ModelCallResult) -> None:
        self._table[result.call_id] = result.model_dump(mode="json")


class TableBudgets:
    """Spend per (tenant, period, partition) in a table; budgets checked against the
    group-wide `SpendView` that follows the table's changelog."""

    def __init__(self, budgets: dict[str, Budget], table: Any, view: SpendView) -> None:
        self._budgets = budgets
        self._table = table
        self._view = view

    def _period(self, tenant: str) -> tuple[Budget | None, str]:
        budget = self._budgets.get(tenant)
        return budget, period_key(budget.period if budget else "day", datetime.now(UTC))

    def over_budget(self, tenant: str) -> OverBudget | None:
        budget, period = self._period(tenant)
        if budget is None:
            return None
        spent = self._view.total(tenant, period)
        return OverBudget(period, spent, budget.usd) if spent >= budget.usd else None

    def charge(self, tenant: str, cost_usd: float) -> None:
        if cost_usd <= 0:
            return
        event = current_event()
        assert event is not None, "charge() runs inside stream processing"
        _, period = self._period(tenant)
        key = spend_key(tenant, period, event.message.partition)
        total = self._table[key] + cost_usd
        self._table[key] = total
        self._view.set_partial(key, total)  # our own writes count at once
