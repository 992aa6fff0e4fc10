"""Per-tenant budgets shared by every worker of the group.

Spend is kept per (tenant, period, partition) in a faust table, written only by the owner
of that partition and recovered with it. Every worker also follows the table's changelog
topic (all partitions, no consumer group), so it knows the whole group's spend per tenant
and can park a tenant's events once the group as a whole is past the budget.

A worker counts its own spend at once: a tenant over budget is parked by this worker from
its next event. Its totals reach the changelog once per flush (`LLMFLOW_SPEND_FLUSH_S`,
0.5 s; each total that changed is written once, however many calls it took), so the other
workers see them within the flush interval plus the time the changelog takes to reach them,
and a tenant may overshoot its budget by what the group spends in that time. A worker's
spend is flushed before its partitions are revoked and when it stops; a kill -9 loses at
most the spend of its last interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmflow.services.broker.cancel import stopping
from llmflow.services.broker.security import client_options

log = logging.getLogger(__name__)

RETRY_PAUSE_S = 1.0
"""Pause before the spend changelog is read again after a failed round."""

Period = Literal["hour", "day", "month"]


class Budget(BaseModel):
    """A tenant's spending limit per calendar period (UTC)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    usd: float = Field(ge=0)
    """Spend allowed per period, in USD."""
    period: Period = "day"
    """Calendar period (UTC) the spend is summed over."""


def period_key(period: Period, when: datetime) -> str:
    if period == "hour":
        return when.strftime("%Y-%m-%dT%H")
    if period == "day":
        return when.strftime("%Y-%m-%d")
    return when.strftime("%Y-%m")


def spend_key(tenant: str, period: str, partition: int) -> str:
    return f"{tenant}|{period}|{partition}"


class SpendView:
    """The group's spend per tenant and period, from the spend table's changelog."""

    def __init__(self) -> None:
        self._partials: dict[str, float] = {}
        self._totals: dict[tuple[str, str], float] = defaultdict(float)

    def set_partial(self, key: str, value: float) -> None:
        """A key's total never falls (spend is only ever added): a record older than what
        is known (this worker's own, read back from the changelog after a later charge,
        or the changelog read again from its start) is ignored."""
        tenant, period, _ = key.rsplit("|", 2)
        previous = self._partials.get(key, 0.0)
        if value <= previous:
            return
        self._partials[key] = value
        self._totals[tenant, period] += value - previous

    def total(self, tenant: str, period: str) -> float:
        return self._totals.get((tenant, period), 0.0)

    def tenants(self) -> set[str]:
        """Every tenant with spend in any period."""
        return {tenant for tenant, _ in self._totals}


async def follow_changelog(
    bootstrap_servers: str, topic: str, partitions: int, view: SpendView
) -> None:
    """Apply every record of the spend changelog to `view`, forever (cancel to stop). A
    broker outage ends a round; the next reads the topic again from its start (records
    hold totals, so reading one twice changes nothing)."""
    from aiokafka.errors import KafkaError

    while True:
        try:
            await _read_changelog(bootstrap_servers, topic, partitions, view)
        except KafkaError as exc:
            log.warning("spend: cannot read %s (%s); reading it again in 1 s", topic, exc)
            await asyncio.sleep(RETRY_PAUSE_S)
        except asyncio.CancelledError:
            if stopping():
                raise  # the worker stops
            # aiokafka's, after an outage: the spend must go on.
            log.warning("spend: the reader of %s stopped uncleanly; reading it again", topic)
            await asyncio.sleep(RETRY_PAUSE_S)


async def _read_changelog(
    bootstrap_servers: str, topic: str, partitions: int, view: SpendView
) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        **client_options(),
        group_id=None,  # every worker reads every partition
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        # faust creates the changelog topic at start-up; topics() refreshes the metadata.
        while topic not in await consumer.topics():  # noqa: ASYNC110  (polls the broker)
            await asyncio.sleep(0.5)
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        key: Any = json.loads(record.key) if record.key else None
                        value: Any = json.loads(record.value) if record.value else 0.0
                        if isinstance(key, str):
                            view.set_partial(key, float(value))
    finally:
        await consumer.stop()
