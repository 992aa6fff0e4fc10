"""With every partition stopped by a full buffer, faust fetches again as soon as one is
resumed, not after its one-second sleep."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from llmflow.services.worker import flow

TP0 = TP("in", 0)


class _Consumer:
    """The part of faust's consumer that buffer flow control touches."""

    def __init__(self, active: set[TP], buffered: set[TP]) -> None:
        self.flow_active = True
        self.app = SimpleNamespace(client_only=False)
        self.active = active
        self._buffered_partitions = buffered
        self.fetched: list[set[TP]] = []
        self.not_waiting_next_records = asyncio.Event()

    def _get_active_partitions(self) -> set[TP]:
        return self.active

    async def _getmany(self, active_partitions: set[TP], timeout: float) -> dict[TP, Any]:  # noqa: ASYNC109
        self.fetched.append(set(active_partitions))
        return {}

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_a_resumed_partition_ends_the_wait_at_once() -> None:
    consumer = _Consumer(active=set(), buffered={TP0})
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, flow._on_buffer_drop, consumer, TP0)
    began = time.monotonic()
    records, active = await flow._wait_next_records(consumer, 1.0)
    waited = time.monotonic() - began
    assert records == {}
    assert active == {TP0}
    assert waited < 0.5, f"waited {waited:.2f} s for a partition resumed after 0.05 s"


async def test_without_a_resume_it_waits_no_longer_than_the_timeout() -> None:
    consumer = _Consumer(active=set(), buffered={TP0})
    began = time.monotonic()
    records, active = await flow._wait_next_records(consumer, 0.2)
    assert (records, active) == ({}, set())
    assert 0.15 < time.monotonic() - began < 0.9


async def test_with_an_active_partition_faust_fetches_as_before() -> None:
    consumer = _Consumer(active={TP0}, buffered=set())
    await flow._wait_next_records(consumer, 0.1)
    assert consumer.fetched == [{TP0}]


def test_installed_on_faust_consumer() -> None:
    flow.fetch_as_soon_as_drained()
    assert Consumer._wait_next_records is flow._wait_next_records
    assert Consumer.on_buffer_drop is flow._on_buffer_drop


def test_the_worker_consumer_holds_an_idle_fetch_briefly(monkeypatch: Any) -> None:
    made = SimpleNamespace(_fetch_max_wait_ms=1500)  # what faust passes aiokafka
    monkeypatch.setattr(flow, "_faust_create_worker_consumer", lambda *a, **k: made)
    assert flow._create_worker_consumer(object()) is made
    assert made._fetch_max_wait_ms == flow.FETCH_MAX_WAIT_MS <= 100
