"""Org data in compacted topics, on the real broker: every worker keeps its own copy, so
workers with separate data folders (separate machines, in effect) enrich alike; updates,
deletes and Debezium change events published while they run reach outputs within 2 s; a
worker started later is ready before it takes events; a restarted one resumes from its
last applied offset; retrieval finds the labelled passages and keeps tenants apart."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer

from dev.launch import Child, start_worker
from llmflow.schemas.outputs import Output
from llmflow.services.broker.local import free_port
from llmflow.services.cli import main
from llmflow.services.orgdata import sample_records
from llmflow.services.sdk import EventProducer, ResultConsumer, text_event
from llmflow.services.worker.orgdata import publish_samples, publish_tables
from llmflow.services.worker.settings import Settings
from tests.integration.helpers import org_copy, wait_until_all_assigned

QUERIES = Path(__file__).parents[2] / "dev" / "bench" / "retrieval_queries.jsonl"
LIVE_S = 2.0  # the bound: an update reaches outputs within this
CUSTOMERS = [f"C-{1001 + n}" for n in range(24)]


def _ready_line(worker: Child, timeout_s: float = 60.0) -> re.Match[str]:
    """The worker's "org data ready" line, once it has logged it: a worker that joined the
    group after the others had answered every event may still be starting."""
    deadline = time.monotonic() + timeout_s
    pattern = r"org data ready in [\d.]+ s, (\d+) records read"
    while (found := re.search(pattern, worker.log_tail(200_000))) is None:
        assert worker.alive() and time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    return found


def test_workers_share_live_org_data_and_retrieve_per_tenant(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}.orgdata."
    sim = modelsim()
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        openai_base_url=sim.extra["base_url"],
        orgdata_topic_prefix=prefix,
    )
    publish_samples(settings)
    path = topology_copy("support_triage")
    spec = yaml.safe_load(path.read_text())
    env = worker_env(sim) | {"LLMFLOW_ORGDATA_TOPIC_PREFIX": prefix}
    ports = [free_port(), free_port()]
    first, second = (workers([path], env | {"LLMFLOW_METRICS_PORT": str(p)}) for p in ports)
    # Both in one settled group first: this test is about what each one's copy holds.
    wait_until_all_assigned(ports)
    consumer = ResultConsumer(kafka_bootstrap, [spec["output_topic"], spec["dead_letter_topic"]])
    producer = EventProducer(kafka_bootstrap)
    sent: dict[str, float] = {}

    def send(text: str, key: str, tenant: str | None = None) -> str:
        event = text_event(text, key=key, tenant=tenant)
        producer.send(spec["input_topic"], event)
        sent[event.id] = time.monotonic()
        return event.id

    def outputs(count: int) -> dict[str, Output]:
        producer.flush()
        got = list(consumer.results(idle_timeout_s=60, limit=count))
        assert len(got) == count, f"{len(got)} of {count}\n{first.log_tail()}"
        assert all(isinstance(r, Output) for r in got), got
        return {r.event_id: r for r in got if isinstance(r, Output)}

    try:
        # 1. Both workers enrich from their own copies, and retrieve the labelled passages.
        labelled = [json.loads(line) for line in QUERIES.read_text().splitlines() if line]
        asked = {
            send(q["query"], CUSTOMERS[n % 24], q.get("tenant")): q for n, q in enumerate(labelled)
        }
        asked |= {
            send(f"Question {n} about my invoice", key): {} for n, key in enumerate(CUSTOMERS)
        }
        answered = outputs(len(asked))
        assert len({o.worker for o in answered.values()}) == 2  # both workers took part
        copy = org_copy(kafka_bootstrap, prefix, "customers", "policies")
        for output in answered.values():
            record = copy.get("customers", output.event_key)
            assert output.org_record is not None and record is not None
            assert (output.org_record.version, output.org_record.offset) == (
                record.version,
                record.offset,
            )
        tenants = {r["id"]: r.get("tenant") for r in sample_records()["policies"]}
        hits = 0
        for event_id, query in asked.items():
            retrieval = answered[event_id].retrieval
            assert retrieval is not None and retrieval.embedding is not None
            keys = [p.key for p in retrieval.passages]
            assert all(tenants[k] in (None, answered[event_id].tenant) for k in keys), keys
            hits += bool(query) and query["expected"] in keys
        assert hits / len(labelled) >= 0.9, f"recall@3 {hits}/{len(labelled)}"

        # 2. An update, a delete and a Debezium change event, while the workers run.
        before = copy.get("customers", "C-1001")
        assert before is not None
        renamed = dict(before.data, name="Renamed Bakery")
        publish_tables(settings, {"customers": [renamed]})
        changed_at = time.monotonic()
        raw = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        raw.send(f"{prefix}customers", key=b"C-1002", value=None)
        row = {"id": "C-1003", "name": "Debezium Bakery", "tier": "enterprise", "language": "en"}
        envelope = {
            "schema": {"type": "struct"},
            "payload": {"before": None, "after": row, "op": "u"},
        }
        raw.send(
            f"{prefix}customers",
            key=json.dumps({"payload": {"id": "C-1003"}, "schema": {}}).encode(),
            value=json.dumps(envelope).encode(),
        )
        raw.flush()
        raw.close()
        stream = []
        while time.monotonic() - changed_at < LIVE_S + 2:
            stream += [send("Where is my order?", key) for key in ("C-1001", "C-1002", "C-1003")]
            time.sleep(0.1)
        live = outputs(len(stream))
        late = [live[i] for i in stream if sent[i] - changed_at > LIVE_S]
        assert len(late) >= 9
        for output in late:
            assert output.org_record is not None
            if output.event_key == "C-1001":
                assert "Renamed Bakery" in output.call("draft_reply").answer
            elif output.event_key == "C-1002":
                assert output.org_record.version is None  # deleted
            else:
                assert "Debezium Bakery" in output.call("draft_reply").answer
        seen_new = min(
            sent[i] - changed_at
            for i in stream
            if live[i].event_key == "C-1001" and "Renamed" in live[i].call("draft_reply").answer
        )
        print(f"update first seen by an event sent {seen_new:.2f} s after it was published")

        # 3. A worker started later catches up before it takes events; 4. a restart resumes.
        second.stop()
        third = workers([path], env)
        first.stop()
        restarted = start_worker(
            "worker-1-again",
            [path],
            run_dir / "logs",
            {**env, "LLMFLOW_DATA_DIR": str(run_dir / "worker-1")},
            ["--loglevel", "warn"],
        )
        try:
            after = [send("Is my account in order?", key) for key in CUSTOMERS]
            final = outputs(len(after))
            for output in final.values():
                assert output.org_record is not None
                if output.event_key == "C-1002":
                    assert output.org_record.version is None
                else:
                    assert output.org_record.version is not None, output.event_key
            assert int(_ready_line(third).group(1)) >= 24 + 47  # read every table from the start
            # Only what was published since it stopped (nothing): not the tables again.
            assert int(_ready_line(restarted).group(1)) < 24, restarted.log_tail()
        finally:
            restarted.stop()
    finally:
        producer.close()
        consumer.close()


def test_loads_are_whole_or_nothing_full_sync_deletes_and_garbage_is_skipped(
    kafka_bootstrap: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}.orgdata."
    topic = f"{prefix}customers"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("LLMFLOW_ORGDATA_TOPIC_PREFIX", prefix)
    monkeypatch.setenv("LLMFLOW_MAX_RECORD_BYTES", str(100_000))
    path = tmp_path / "customers.jsonl"
    path.write_text("".join(json.dumps({"id": f"C-{n}", "n": n}) + "\n" for n in range(10)))
    assert main(["orgdata", "load", "customers", str(path)]) == 0
    assert f"customers: 10 records published to {topic}" in capsys.readouterr().out

    # A record too large to publish stops the load before anything is sent.
    big = [json.dumps({"id": f"C-{n}", "n": -n}) for n in range(9)]
    path.write_text(
        "\n".join(
            [
                *big,
                json.dumps(
                    {"id": "C-9", "blob": "x" * 60_000} | {f"f{i}": "y" * 60_000 for i in range(2)}
                ),
            ]
        )
        + "\n"
    )
    assert main(["orgdata", "load", "customers", str(path)]) == 2
    assert "over what a record may take" in capsys.readouterr().err
    copy = org_copy(kafka_bootstrap, prefix, "customers")
    kept = [copy.get("customers", f"C-{n}") for n in range(9)]
    assert [r.data["n"] if r else None for r in kept] == list(range(9))

    # Garbage in the topic is skipped; the copy still catches up with what is valid.
    raw = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for key, value in [
        (b"C-x", b"{not json"),
        (b"C-y", b"[" * 50_000 + b"]" * 50_000),
        (b"C-z", b'{"_llmflow": 5}'),
        (b"\xff", b"{}"),
    ]:
        raw.send(topic, key=key, value=value)
    raw.flush()
    raw.close()

    # --full-sync: keys the file lacks are deleted; unchanged ones are not published again.
    path.write_text("".join(json.dumps({"id": f"C-{n}", "n": n}) + "\n" for n in range(5)))
    assert main(["orgdata", "load", "customers", str(path), "--full-sync"]) == 0
    assert "0 records published" in capsys.readouterr().out  # 5 unchanged, 5 deleted
    copy = org_copy(kafka_bootstrap, prefix, "customers")
    assert copy.tables() == {"customers": 5}
    assert copy.get("customers", "C-4") is not None and copy.get("customers", "C-5") is None
    assert main(["orgdata", "get", "customers", "C-3"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["key"], shown["data"], shown["topic"]) == ("C-3", {"id": "C-3", "n": 3}, topic)
    assert main(["orgdata", "get", "customers", "C-7"]) == 1


def test_a_batch_that_fails_to_apply_is_read_again_and_nothing_is_lost(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmflow.services.orgdata import Materializer, OrgDataStore
    from llmflow.services.orgdata.store import OrgDataError

    prefix = f"t-{uuid.uuid4().hex[:8]}.orgdata."
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("LLMFLOW_ORGDATA_TOPIC_PREFIX", prefix)
    path = tmp_path / "customers.jsonl"
    count = 30_000
    path.write_text("".join(json.dumps({"id": f"C-{n}", "n": n}) + "\n" for n in range(count)))
    assert main(["orgdata", "load", "customers", str(path)]) == 0

    store = OrgDataStore(tmp_path / "org.sqlite3")
    write = store.write
    calls = 0

    def failing_once(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # a batch while the next one is being decoded
            raise OrgDataError("disk full (injected)")
        write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write", failing_once)
    follower = Materializer(store, kafka_bootstrap, {"customers": f"{prefix}customers"})
    follower.start()
    try:
        assert follower.wait_ready(60)
    finally:
        follower.stop()
    assert isinstance(follower.error, OrgDataError)
    assert calls > 2
    assert store.tables() == {"customers": count}
    found = [store.get("customers", f"C-{n}") for n in (0, count // 2, count - 1)]
    assert [r.data["n"] if r else None for r in found] == [0, count // 2, count - 1]
    store.close()


def test_records_taken_unchecked_end_as_if_each_had_been_decoded(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Plain records skip the Python JSON parse; a batch with one that is not valid JSON, or
    a topic that turns out to carry Debezium events, is decoded in full. Either way the copy
    is what decoding every record in order makes of the topic."""
    from llmflow.services.broker.topics import ensure_topics
    from llmflow.services.orgdata import Materializer, OrgDataStore
    from llmflow.services.orgdata.changes import Rejected, decode

    plain, mixed = (f"t-{uuid.uuid4().hex[:8]}.orgdata.{t}" for t in ("plain", "mixed"))
    ensure_topics(kafka_bootstrap, [plain, mixed], 1, 1, {"cleanup.policy": "compact"})
    rows: list[tuple[bytes, bytes | None]] = [
        (f"K-{n % 700}".encode(), json.dumps({"n": n}).encode()) for n in range(2000)
    ]
    garbage: list[tuple[bytes, bytes | None]] = [
        (b"G-1", b"{not json"),
        (b"G-2", b'{"n": NaN}'),
        (b"G-3", b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}"),
        (b"K-4", None),
        (b"G-5", json.dumps({"op": "u", "after": {"n": -5}}).encode()),
    ]
    records = {plain: rows, mixed: [*rows[:1000], *garbage, *rows[1000:]]}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for topic, sent in records.items():
        for key, value in sent:
            producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    store = OrgDataStore(tmp_path / "org.sqlite3")
    follower = Materializer(store, kafka_bootstrap, {"plain": plain, "mixed": mixed})
    follower.start()
    try:
        assert follower.wait_ready(60)
    finally:
        follower.stop()
    expected = OrgDataStore(":memory:")
    rejected = 0
    for table, topic in (("plain", plain), ("mixed", mixed)):
        for offset, (key, value) in enumerate(records[topic]):
            try:
                change = decode(key, value)
            except Rejected:
                rejected += 1
                continue
            if change is not None:
                expected.apply(table, 0, [(offset, change)], offset + 1)
    assert rejected == 3 and follower.rejected == rejected  # not JSON; NaN; nested too deep
    assert store.tables() == expected.tables()

    for table in ("plain", "mixed"):
        assert store.records(table) == expected.records(table)
        for name in [f"K-{n}" for n in range(700)] + [f"G-{n}" for n in range(1, 6)]:
            assert store.get(table, name) == expected.get(table, name), (table, name)
    store.close()
    expected.close()


def test_partitions_added_to_a_table_topic_are_read_without_a_restart(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic

    from llmflow.services.orgdata import Materializer, OrgDataStore
    from llmflow.services.orgdata import materializer as materializer_module

    monkeypatch.setattr(materializer_module, "PARTITIONS_CHECK_S", 0.5)
    topic = f"t-{uuid.uuid4().hex[:8]}.orgdata.customers"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
        producer.send(topic, key=b"C-1", value=b'{"n": 1}', partition=0)
        producer.flush()
        store = OrgDataStore(tmp_path / "org.sqlite3")
        follower = Materializer(store, kafka_bootstrap, {"customers": topic})
        follower.start()
        try:
            assert follower.wait_ready(60)
            assert store.tables() == {"customers": 1}
            admin.create_partitions({topic: NewPartitions(total_count=3)})
            producer.close()
            producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
            while len(producer.partitions_for(topic) or ()) < 3:
                time.sleep(0.2)
            # Published before the worker notices the partitions: read from their start.
            for partition in (1, 2):
                producer.send(
                    topic, key=f"C-{partition + 1}".encode(), value=b"{}", partition=partition
                )
            producer.flush()
            deadline = time.monotonic() + 30
            while store.tables().get("customers") != 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert store.tables() == {"customers": 3}
            assert store.positions("customers") == {0: 1, 1: 1, 2: 1}
            assert follower.error is None
        finally:
            follower.stop()
            store.close()
    finally:
        producer.close()
        admin.close()


def test_a_copy_away_longer_than_delete_retention_is_read_again(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Compaction may have dropped tombstones the copy never saw: it starts over."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from llmflow.services.orgdata import Materializer, OrgDataStore

    prefix = f"t-{uuid.uuid4().hex[:8]}.orgdata."
    topics = {"brief": f"{prefix}brief", "usual": f"{prefix}usual"}
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        brief = {"cleanup.policy": "compact", "delete.retention.ms": "1000"}
        admin.create_topics(
            [
                NewTopic(topics["brief"], 1, 1, topic_configs=brief),
                NewTopic(topics["usual"], 1, 1, topic_configs={"cleanup.policy": "compact"}),
            ]
        )
        for topic in topics.values():
            producer.send(topic, key=b"K", value=b'{"n": 1}')
        producer.flush()
    finally:
        producer.close()
        admin.close()

    def follow(store: OrgDataStore) -> None:
        follower = Materializer(store, kafka_bootstrap, topics)
        follower.start()
        try:
            assert follower.wait_ready(60)
        finally:
            follower.stop()

    store = OrgDataStore(tmp_path / "org.sqlite3")
    began = time.time()
    follow(store)
    for table in topics:
        synced = store.synced_at(table)
        assert synced is not None and began - 1 <= synced <= time.time()
    time.sleep(1.5)
    caplog.clear()
    follow(store)  # a restart: as a new process, it knows only what the store says
    warned = [r.getMessage() for r in caplog.records if "delete.retention.ms" in r.getMessage()]
    assert len(warned) == 1 and "brief" in warned[0] and "reading it again" in warned[0]
    assert store.tables() == {"brief": 1, "usual": 1}
    store.close()
