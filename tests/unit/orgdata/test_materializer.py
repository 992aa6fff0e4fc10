"""The materializer's handling of one record, without a broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from llmflow.services.orgdata import materializer
from llmflow.services.orgdata.materializer import Materializer
from llmflow.services.orgdata.store import OrgDataStore


def test_a_record_that_breaks_decode_is_skipped_not_retried_for_ever(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(key: bytes | None, value: bytes | None) -> None:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(materializer, "decode", broken)
    with OrgDataStore(":memory:") as store:
        follower = Materializer(store, "127.0.0.1:1", {"t": "topic.t"})
        assert follower._decoded(TopicPartition("topic.t", 2), 7, b"K", b"{}") is None
    assert follower.rejected == 1
    assert "topic.t[2]@7 skipped: cannot decode it" in caplog.text


@pytest.mark.parametrize(
    "failure",
    [asyncio.CancelledError(), KafkaError("no brokers"), RuntimeError("bug")],
    ids=["cancelled", "kafka", "other"],
)
def test_the_follower_thread_outlives_any_failure_of_a_round(
    monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """After a broker outage aiokafka's `stop()` let a CancelledError out of the round,
    which killed the thread: the copy stayed as it was for good."""
    rounds: list[int] = []
    with OrgDataStore(":memory:") as store:
        follower = Materializer(store, "127.0.0.1:1", {"t": "topic.t"})

        async def round_that_fails() -> None:
            rounds.append(1)
            if len(rounds) < 3:
                raise failure
            follower._stopping.set()

        monkeypatch.setattr(follower, "_follow", round_that_fails)
        monkeypatch.setattr(follower._stopping, "wait", lambda timeout=None: False)
        follower.start()
        assert follower._thread is not None
        follower._thread.join(5)
        assert not follower._thread.is_alive()
        assert len(rounds) == 3 and follower.error is failure
