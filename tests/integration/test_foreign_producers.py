"""Input written by a transactional producer (Kafka Streams, Debezium with exactly-once,
another faust app): every transaction ends with a commit marker that takes an offset but
never reaches a consumer. The worker answers every event and still commits past every
record of each partition (a commit that waited for the markers to be acked would never
move again)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from dev.launch import Child
from llmflow.schemas.outputs import Output
from llmflow.services.broker.topics import ensure_topics
from llmflow.services.sdk import ResultConsumer, text_event
from llmflow.services.sdk.consumer import Result
from tests.integration.helpers import keep_calls

pytestmark = pytest.mark.integration

TRANSACTIONS, PER_TRANSACTION = 6, 10


def _committed_past_every_record(bootstrap: str, group: str, topic: str) -> tuple[bool, str]:
    """Whether the group committed past the last record of each partition (the last commit
    marker is never read, so a commit stops just before it)."""
    with KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    ) as reader:
        parts = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
        committed = {tp: reader.committed(tp) for tp in parts}
        reader.assign(parts)
        reader.seek_to_beginning(*parts)
        due: dict[TopicPartition, int] = {}
        for record in reader:
            tp = TopicPartition(record.topic, record.partition)
            due[tp] = max(due.get(tp, 0), record.offset + 1)
    behind = {
        tp.partition: (committed[tp], end) for tp, end in due.items() if (committed[tp] or 0) < end
    }
    return not behind, f"partition: (committed, due) {behind}"


def test_transaction_markers_do_not_hold_commits_back(
    kafka_bootstrap: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    path = topology_copy("support_triage")
    keep_calls(path, "summarize")
    spec = yaml.safe_load(path.read_text())
    env = worker_env(modelsim())
    group, topic = env["LLMFLOW_APP_ID"], spec["input_topic"]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"up-{topic}")
    producer.init_transactions()
    topics = [spec["output_topic"], spec["dead_letter_topic"]]
    # The topics exist before the results consumer joins its group: one that joins first is
    # assigned nothing, and on a busy machine it stayed so for the whole test.
    partitions = int(env.get("LLMFLOW_TOPIC_PARTITIONS", "4"))
    ensure_topics(kafka_bootstrap, [topic, *topics], partitions)
    results: list[Result] = []
    sent: list[str] = []
    with ResultConsumer(kafka_bootstrap, topics) as consumer:
        # A second worker starts where the first one committed: at a commit marker.
        for first, last in ((0, TRANSACTIONS // 2), (TRANSACTIONS // 2, TRANSACTIONS)):
            worker = workers([path], env)
            for t in range(first, last):
                sent += _transaction(producer, topic, t)
                # every answer (and a commit after it) lands before the next transaction
                results += consumer.results(idle_timeout_s=60, limit=PER_TRANSACTION)
                time.sleep(3)
            done, behind = _committed_past_every_record(kafka_bootstrap, group, topic)
            deadline = time.monotonic() + 30
            while not done and time.monotonic() < deadline:
                time.sleep(1)
                done, behind = _committed_past_every_record(kafka_bootstrap, group, topic)
            assert done, f"commits stopped short of the markers: {behind}\n{worker.log_tail()}"
            worker.stop()
    producer.close()

    assert sorted(r.event_id or "" for r in results) == sorted(sent)
    assert all(isinstance(r, Output) for r in results)


def _transaction(producer: KafkaProducer, topic: str, t: int) -> list[str]:
    producer.begin_transaction()
    for n in range(PER_TRANSACTION):
        event = text_event(f"ticket {t}.{n}", key=f"C-{1001 + n % 30}", event_id=f"tx-{t}-{n}")
        producer.send(topic, key=event.key.encode(), value=event.model_dump_json().encode())
    producer.commit_transaction()
    return [f"tx-{t}-{n}" for n in range(PER_TRANSACTION)]
