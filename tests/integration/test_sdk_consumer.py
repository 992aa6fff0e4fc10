"""`ResultConsumer` and `llmflow consume`: without a group they read every partition of
their topics, including topics and partitions created after they started, never wait on a
group join and leave no group behind; with one they continue where the last run stopped."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewPartitions

from llmflow.services.broker.topics import ensure_topics
from llmflow.services.cli import main
from llmflow.services.sdk import ResultConsumer

pytestmark = pytest.mark.integration


def _send(producer: KafkaProducer, topic: str, partitions: range, label: str) -> set[bytes]:
    values = {f"{label}-{p}".encode() for p in partitions}
    for p in partitions:
        producer.send(topic, value=f"{label}-{p}".encode(), partition=p)
    producer.flush()
    return values


def test_follows_topics_and_partitions_created_later(kafka_bootstrap: str) -> None:
    topic = f"sdk.late.{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    with (
        ResultConsumer(kafka_bootstrap, [topic]) as first,
        ResultConsumer(kafka_bootstrap, [topic]) as second,
    ):
        assert list(first.records(idle_timeout_s=1)) == []  # nothing was written yet
        # A broker that creates topics on first use made it already, with its defaults.
        count = ensure_topics(kafka_bootstrap, [topic], 2)[topic]
        sent = _send(producer, topic, range(count), "before")
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_partitions({topic: NewPartitions(total_count=count + 2)})
        finally:
            admin.close()
        later = KafkaProducer(bootstrap_servers=kafka_bootstrap)  # knows the new partitions
        sent |= _send(later, topic, range(count + 2), "after")
        later.close()
        # Independent readers: each one gets every record, from every partition.
        for consumer in (first, second):
            got = {r.value for r in consumer.records(idle_timeout_s=20, limit=len(sent))}
            assert got == sent
    producer.close()


def _consume(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["consume", *args]) == 0
    return capsys.readouterr().out.splitlines()


def _groups_reading(admin: KafkaAdminClient, topic: str) -> list[str]:
    """The consumer groups with an offset committed on `topic`."""
    names = [group["group_id"] for group in admin.list_groups()]
    offsets = admin.list_group_offsets(names) if names else {}
    return [
        name for name, committed in offsets.items() if any(tp.topic == topic for tp in committed)
    ]


def test_consume_with_a_group_continues_where_the_last_run_stopped(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    topic, group = f"sdk.group.{uuid.uuid4().hex[:8]}", f"llmflow-test-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], 1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for n in range(5):
        producer.send(topic, value=f"v{n}".encode())
    producer.flush()
    producer.close()

    assert _consume(capsys, topic, "--group", group, "--max", "2") == ["v0", "v1"]
    # The records polled with those two but not printed are the next run's.
    assert _consume(capsys, topic, "--group", group, "--idle-timeout", "3") == ["v2", "v3", "v4"]
    assert _consume(capsys, topic, "--group", group, "--idle-timeout", "2") == []
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        committed = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    assert committed[TopicPartition(topic, 0)].offset == 5


def test_consume_without_a_group_leaves_none_behind(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    topic = f"sdk.nogroup.{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], 2)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    sent = _send(producer, topic, range(2), "v")
    producer.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        before = {group["group_id"] for group in admin.list_groups()}
        # Twice: a second run reads everything again, since nothing was committed.
        for _ in range(2):
            assert set(_consume(capsys, topic, "--idle-timeout", "2")) == {v.decode() for v in sent}
        after = {group["group_id"] for group in admin.list_groups()}
        assert _groups_reading(admin, topic) == []
    finally:
        admin.close()
    assert not {name for name in after - before if "llmflow" in name}
