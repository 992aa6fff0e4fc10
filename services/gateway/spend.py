"""Spend per tenant this period, as the workers' group knows it: the gateway follows each
topology's spend changelog (the faust table `<topology>-spend` of the group, co-partitioned
with the input topic) into a `SpendView`, the way every worker does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from llmflow.services.gateway.auth import Grant
from llmflow.services.worker.budgets import Budget, SpendView, follow_changelog, period_key
from llmflow.topologies.spec import Topology

WAIT_S = 1.0


def spend_changelog(group: str, topology: Topology) -> str:
    """The changelog topic faust gives the spend table of `topology` in `group`."""
    return f"{group}-{topology.name}-spend-changelog"


async def follow_spend(
    bootstrap_servers: str,
    group: str,
    topologies: list[Topology],
    view: SpendView,
    partitions_of: Callable[[str], int],
) -> None:
    """Follow every topology's spend changelog into `view`, forever (cancel to stop). The
    changelog has as many partitions as the input topic: `partitions_of(input topic)`,
    0 until it is known."""

    async def one(topology: Topology) -> None:
        # Polls what the flow meter last sampled: no event to wait on.
        while not (count := partitions_of(topology.input_topic)):  # noqa: ASYNC110
            await asyncio.sleep(WAIT_S)
        await follow_changelog(bootstrap_servers, spend_changelog(group, topology), count, view)

    await asyncio.gather(*(one(t) for t in topologies))


def spend_rows(
    view: SpendView, budgets: dict[str, Budget], grant: Grant, now: datetime
) -> list[dict[str, Any]]:
    """Per tenant `grant` sees (its own; every one on an open gateway): spend this period
    (its budget's period, else the day, as the workers count it) and the budget."""
    tenants = view.tenants() | set(budgets)
    rows = []
    for tenant in sorted(t for t in tenants if grant.sees(t)):
        budget = budgets.get(tenant)
        period = budget.period if budget is not None else "day"
        key = period_key(period, now)
        spent = view.total(tenant, key)
        rows.append(
            {
                "tenant": tenant,
                "period": period,
                "period_key": key,
                "spent_usd": round(spent, 6),
                "budget_usd": budget.usd if budget is not None else None,
                "used": round(spent / budget.usd, 4) if budget is not None and budget.usd else None,
            }
        )
    return rows
