"""The spend follower keeps following through broker outages: a round that fails (a Kafka
error, or the CancelledError aiokafka's stop() lets out after one) is followed by another;
only the worker's own cancellation ends it."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError

from llmflow.services.worker import budgets
from llmflow.services.worker.budgets import SpendView, follow_changelog


async def test_a_failed_round_is_followed_by_another(monkeypatch: pytest.MonkeyPatch) -> None:
    rounds: list[str] = []
    failures: list[BaseException] = [KafkaConnectionError("gone"), asyncio.CancelledError()]

    async def read(servers: str, topic: str, partitions: int, view: SpendView) -> None:
        rounds.append(topic)
        if failures:
            raise failures.pop(0)
        await asyncio.Event().wait()  # following, until cancelled

    monkeypatch.setattr(budgets, "_read_changelog", read)
    monkeypatch.setattr(budgets, "RETRY_PAUSE_S", 0.0)
    follower = asyncio.create_task(follow_changelog("b:1", "spend", 4, SpendView()))
    for _ in range(50):
        await asyncio.sleep(0)
        if len(rounds) == 3:
            break
    assert rounds == ["spend"] * 3 and not follower.done()
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
