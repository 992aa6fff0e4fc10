"""Poison records through a real broker and a running worker: 300 hostile records mixed with
50 good events, sent within about a second. Every good event gets an output, every hostile
record a dead letter, and the worker is still running afterwards."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer

from dev.launch import Child
from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.services.sdk import ResultConsumer, text_event
from llmflow.services.sdk.consumer import Result

pytestmark = pytest.mark.integration

BLOB_BYTES = 800_000  # its base64 alone would pass the 1,000,000-byte record limit
DEPTH = 6_000


def test_hostile_records_get_dead_letters_and_the_worker_lives_on(
    kafka_bootstrap: str,
    run_dir: Path,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    triage_path, products_path = topology_copy("support_triage"), topology_copy("product_images")
    triage = yaml.safe_load(triage_path.read_text())
    products = yaml.safe_load(products_path.read_text())
    (run_dir / "images").mkdir()
    null_byte_url = f"{(run_dir / 'images').as_uri()}/photo%00.jpg"

    rng = random.Random(315)
    # (topic, key, value, what it is)
    records: list[tuple[str, bytes | None, bytes | None, str]] = []
    for n in range(50):
        event = text_event(
            f"Ticket {n}: charged twice", key=f"C-{1001 + n % 30}", event_id=f"g-{n}"
        )
        records.append(
            (triage["input_topic"], event.key.encode(), event.model_dump_json().encode(), "good")
        )
    inputs = [triage["input_topic"], products["input_topic"]]
    for n in range(300):
        topic = inputs[n % 2]
        kind = ["tombstone", "not_json", "deep", "null_byte"][n % 4] if n >= 5 else "blob"
        if kind == "tombstone":
            records.append((topic, b"k", None, kind))
        elif kind == "not_json":
            records.append((topic, b"k", b"\xff" + rng.randbytes(rng.randrange(200)), kind))
        elif kind == "deep":
            opener, closer = rng.choice([(b"[", b"]"), (b'{"id":', b"}")])
            records.append((topic, None, opener * DEPTH + b"1" + closer * DEPTH, kind))
        elif kind == "null_byte":
            body = json.loads(
                text_event("see photo", key="P-2001", event_id=f"h-{n}").model_dump_json()
            )
            body |= {"kind": "text_image", "images": [{"url": null_byte_url}]}
            records.append((products["input_topic"], b"P-2001", json.dumps(body).encode(), kind))
        else:
            records.append((triage["input_topic"], b"k", rng.randbytes(BLOB_BYTES), kind))
    rng.shuffle(records)
    sent = Counter(what for *_, what in records)
    assert sent["good"] == 50 and sum(sent.values()) == 350 and sent["blob"] == 5

    sim = modelsim()
    worker = workers([triage_path, products_path], worker_env(sim))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    try:
        for topic, key, value, _ in records:
            producer.send(topic, value=value, key=key)
        producer.flush(30)
    finally:
        producer.close()

    topics = [triage["output_topic"], triage["dead_letter_topic"]]
    topics += [products["output_topic"], products["dead_letter_topic"]]
    results: list[Result] = []
    with ResultConsumer(kafka_bootstrap, topics) as consumer:
        results.extend(consumer.results(idle_timeout_s=45, limit=len(records)))
        late = list(consumer.results(idle_timeout_s=2))  # nothing answered twice
    assert worker.alive(), worker.log_tail()
    assert "could not be answered" not in worker.log_tail(100_000)

    outputs = [r for r in results if isinstance(r, Output)]
    dead = [r for r in results if isinstance(r, DeadLetter)]
    assert len(outputs) + len(dead) == len(records), (
        f"{len(outputs)} outputs + {len(dead)} dead letters for {len(records)} records\n"
        f"{worker.log_tail()}"
    )
    assert late == []
    assert sorted(o.event_id for o in outputs) == sorted(f"g-{n}" for n in range(50))
    assert len(dead) == 300

    found = Counter((d.stage, d.error_kind) for d in dead)
    assert found[("decode", "tombstone")] == sent["tombstone"]
    assert found[("decode", "not_json")] == sent["not_json"] + sent["deep"] + sent["blob"]
    null_byte = [d for d in dead if d.event_id is not None and d.event_id.startswith("h-")]
    assert len(null_byte) == sent["null_byte"]
    assert all(d.stage == "image" for d in null_byte), {d.error_kind for d in null_byte}
    blobs = [d for d in dead if d.original_size == BLOB_BYTES]
    assert len(blobs) == sent["blob"]
    assert all(d.original_b64 is None and len(d.original_sha256) == 64 for d in blobs)
    assert all(d.original_b64 is not None for d in dead if 0 < d.original_size < 10_000)
