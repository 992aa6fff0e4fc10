"""The materializer's handling of one record, without a broker."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

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
