"""The index's reader: a lookback before each partition's end, partitions added later read
from their start, and after an error it goes on where it was (a fake consumer, no broker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition

from llmflow.services.gateway import follow
from llmflow.services.gateway.auth import OPEN
from llmflow.services.gateway.follow import ResultFollower
from llmflow.services.gateway.results import ResultIndex


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Log:
    """The topics: topic -> partition -> values."""

    topics: dict[str, dict[int, list[bytes]]] = field(default_factory=dict)
    consumers: int = 0
    fail_once: bool = False
    unclean_stop_once: bool = False
    """The next failed reader's stop() lets a cancellation out (aiokafka after an outage)."""

    def append(self, topic: str, partition: int, event_id: str) -> None:
        value = {"record_type": "output", "event_id": event_id, "tenant": "acme"}
        self.topics.setdefault(topic, {}).setdefault(partition, []).append(
            json.dumps(value).encode()
        )


class Cluster:
    def __init__(self, log: Log) -> None:
        self.log = log

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(self.log.topics[topic]) if topic in self.log.topics else None


class FakeConsumer:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.positions: dict[TopicPartition, int] = {}
        log.consumers += 1

        async def fetch_all_metadata() -> Cluster:
            return Cluster(log)

        self._client = type("Client", (), {"fetch_all_metadata": staticmethod(fetch_all_metadata)})

    async def start(self) -> None: ...

    async def stop(self) -> None:
        if self.log.unclean_stop_once and not self.log.fail_once:
            self.log.unclean_stop_once = False
            raise asyncio.CancelledError

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.log.topics[tp.topic][tp.partition]) for tp in tps}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(0.001)
        if self.log.fail_once:
            self.log.fail_once = False
            raise ConnectionError("broker went away")
        batches = {}
        for tp, offset in self.positions.items():
            values = self.log.topics[tp.topic][tp.partition][offset:]
            if values:
                batches[tp] = [
                    Record(tp.topic, tp.partition, offset + n, b"K", v)
                    for n, v in enumerate(values)
                ]
                self.positions[tp] = offset + len(values)
        return batches


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def test_lookback_new_partitions_and_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follow, "REFRESH_S", 0.05)
    monkeypatch.setattr(follow, "RETRY_PAUSE_S", 0.01)
    log = Log()
    for n in range(10):
        log.append("out", 0, f"a{n}")
    index = ResultIndex(1000, 10**6)
    follower = ResultFollower(
        "unused", {"out": "t", "dlq": "t"}, index, lookback=3, consumer=lambda _: FakeConsumer(log)
    )
    task = asyncio.create_task(follower.run())
    try:
        await _until(lambda: len(index) == 3)
        assert follower.not_ready() == "result topics do not exist yet: dlq"
        log.append("dlq", 0, "d0")  # a topic created later: read from its start
        await _until(lambda: follower.not_ready() is None)
        assert [e.event_id for e in index] == ["a7", "a8", "a9", "d0"]
        log.append("out", 1, "b0")  # a partition added later: from its start
        await _until(lambda: index.get("b0", OPEN) is not None)
        log.fail_once = True  # the reader starts again, from where it was
        log.append("out", 0, "a10")
        await _until(lambda: log.consumers >= 2 and index.get("a10", OPEN) is not None)
        await asyncio.sleep(0.1)
        assert [e.event_id for e in index] == ["a7", "a8", "a9", "d0", "b0", "a10"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_reader_stopping_uncleanly_after_an_outage_does_not_end_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aiokafka's stop() may raise CancelledError after an outage: the index reads on, and
    says it is not ready while it does not read."""
    monkeypatch.setattr(follow, "REFRESH_S", 0.05)
    monkeypatch.setattr(follow, "RETRY_PAUSE_S", 0.2)
    log = Log()
    log.append("out", 0, "a0")
    index = ResultIndex(1000, 10**6)
    follower = ResultFollower(
        "unused", {"out": "t"}, index, lookback=10, consumer=lambda _: FakeConsumer(log)
    )
    task = asyncio.create_task(follower.run())
    try:
        await _until(lambda: follower.not_ready() is None)
        log.unclean_stop_once = log.fail_once = True
        await _until(lambda: follower.not_ready() is not None)
        assert "not reading" in (follower.not_ready() or "")
        log.append("out", 0, "a1")
        await _until(lambda: index.get("a1", OPEN) is not None and follower.not_ready() is None)
        assert not task.done() and log.consumers >= 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_stream_that_keeps_up_takes_a_burst_larger_than_its_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1000 results in one read of the topics, a stream queue of 100: a client that reads as
    fast as it can gets every one, and no `behind` error."""
    from aiohttp.test_utils import TestClient, TestServer

    from llmflow.services.gateway.app import make_app
    from tests.unit.gateway.helpers import ACME, auth, make_gateway

    monkeypatch.setattr(follow, "REFRESH_S", 0.05)
    gateway = make_gateway(stream_queue=100, heartbeat_s=5)
    log = Log()
    log.append("support.triaged", 0, "first")
    follower = ResultFollower(
        "unused",
        {"support.triaged": "support_triage"},
        gateway.index,
        lookback=10,
        consumer=lambda _: FakeConsumer(log),
    )
    reading = asyncio.create_task(follower.run())
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(gateway)))
    await client.start_server()
    try:
        await _until(lambda: follower.not_ready() is None)
        response = await client.get("/v1/topics/support.tickets/results", headers=auth(ACME))
        await _until(lambda: gateway.index.subscribers == 1)
        for n in range(1000):
            log.append("support.triaged", 0, f"burst-{n}")
        body = b""
        while body.count(b"event: output\n") < 1000 and b"event: error" not in body:
            body += await asyncio.wait_for(response.content.readany(), 5)
        assert b"event: error" not in body
        assert body.count(b"event: output\n") == 1000
        response.close()
    finally:
        await client.close()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
