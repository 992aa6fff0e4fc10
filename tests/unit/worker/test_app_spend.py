"""The worker writes its spend every interval and all of it before a rebalance takes its
partitions: the next owner of a partition recovers every total."""

from __future__ import annotations

import asyncio
from pathlib import Path

from faust.types import TP

from llmflow.services.worker.app import create_app, flush_spend
from llmflow.services.worker.budgets import SpendView
from llmflow.services.worker.settings import Settings
from llmflow.services.worker.state import SpendTable
from tests.unit.worker.test_state import FakeTable


class AckingTable(FakeTable):
    """Acks every write at once."""

    def send_changelog(
        self, partition: int, key: str, value: object, value_serializer: str | None = None
    ) -> asyncio.Future[None]:
        future = super().send_changelog(partition, key, value, value_serializer)
        if not future.done():
            future.set_result(None)
        return future


async def test_spend_is_written_before_partitions_are_revoked(tmp_path: Path) -> None:
    app = create_app(Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path))
    table = AckingTable()
    spend = SpendTable(table, SpendView())
    flush_spend(app, [spend], interval_s=3600)  # no interval passes during the test
    spend.add("acme", "2026-11-30", 2, 0.5)
    spend.add("acme", "2026-11-30", 2, 0.25)
    assert table.changelog == []
    await app.on_partitions_revoked.send({TP("in", 2)})
    assert table.changelog == [(2, "acme|2026-11-30|2", 0.75)]
    assert spend.dirty == 0


async def test_a_failed_flush_before_a_rebalance_does_not_stop_the_worker(
    tmp_path: Path,
) -> None:
    app = create_app(Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path))
    table = AckingTable()
    table.fail = RuntimeError("broker down")
    spend = SpendTable(table, SpendView())
    flush_spend(app, [spend], interval_s=3600)
    spend.add("acme", "2026-11-30", 0, 0.5)
    await app.on_partitions_revoked.send(set())  # logged, not raised
    assert spend.dirty == 1  # written by the next flush
