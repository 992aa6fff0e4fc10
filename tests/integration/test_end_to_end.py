"""300 mixed events through a real broker and a running worker: every event is answered
exactly once, by an output with the simulator's answers or by a dead letter with a reason."""

from __future__ import annotations

import base64
import io
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from PIL import Image

from dev.launch import Child
from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.schemas.projections import Projection
from llmflow.services.sdk import EventProducer, ResultConsumer, image_event, text_event
from llmflow.services.sdk.consumer import Result
from tests.integration.helpers import org_copy

pytestmark = pytest.mark.integration

VERSIONS = {"support_triage": "2.0.1", "product_images": "2.0.0"}

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 210)}


def _jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, "PNG")
    return buffer.getvalue()


def _head(text: str) -> str:
    return " ".join(text.split()[:12])


def _with_pixel_limit(path: Path, max_pixels: int) -> Path:
    spec = yaml.safe_load(path.read_text())
    spec["images"]["max_pixels"] = max_pixels
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_mixed_events_all_answered_once(
    kafka_bootstrap: str,
    run_dir: Path,
    org_samples: str,
    modelsim: Callable[..., Child],
    topology_copy: Callable[[str], Path],
    worker_env: Callable[[Child], dict[str, str]],
    workers: Callable[..., Child],
) -> None:
    triage = yaml.safe_load(topology_copy("support_triage").read_text())
    images_path = _with_pixel_limit(topology_copy("product_images"), 2_000_000)
    products = yaml.safe_load(images_path.read_text())
    image_dir = run_dir / "images"
    image_dir.mkdir()
    (image_dir / "big.png").write_bytes(_png((2000, 1500)))  # 3 MP > the 2 MP limit
    for name, colour in COLOURS.items():
        (image_dir / f"{name}.jpg").write_bytes(_jpeg((1600, 1200), colour))

    sim = modelsim()
    worker = workers([run_dir / "support_triage.yaml", images_path], worker_env(sim))

    rng = random.Random(7)
    expected: dict[str, dict[str, object]] = {}  # event id -> what its result must show
    with EventProducer(kafka_bootstrap) as producer:
        for n in range(300):
            event_id = f"ev-{n:03d}"
            roll = n % 10
            customer = f"C-{1001 + rng.randrange(30)}"  # ids past C-1024 have no record
            product = f"P-{2001 + rng.randrange(24)}"
            if roll == 0:
                bad = rng.choice(["not_json", "schema", "corrupt", "pixels"])
                if bad == "not_json":
                    producer.send_raw(triage["input_topic"], b"{not json at all", key=customer)
                    expected[f"raw-{n}"] = {"dead": ("decode", "not_json")}
                elif bad == "schema":
                    body = {"id": event_id, "kind": "text", "key": customer, "text": ""}
                    producer.send_raw(triage["input_topic"], json.dumps(body).encode())
                    expected[event_id] = {"dead": ("validate", "contract_violation")}
                elif bad == "corrupt":
                    junk = base64.b64encode(rng.randbytes(2000)).decode()
                    event = image_event(image_dir / "red.jpg", key=product, event_id=event_id)
                    event = event.model_copy(
                        update={"image": event.image.model_copy(update={"data_base64": junk})}
                    )
                    producer.send(products["input_topic"], event)
                    expected[event_id] = {"dead": ("image", "unreadable")}
                else:
                    event = image_event(
                        (image_dir / "big.png").as_uri(), key=product, event_id=event_id
                    )
                    producer.send(products["input_topic"], event)
                    expected[event_id] = {"dead": ("image", "too_many_pixels")}
            elif roll < 6:
                text = (
                    f"Ticket {n}: my invoice {rng.randrange(10**6)} was charged twice, please help"
                )
                producer.send(
                    triage["input_topic"], text_event(text, key=customer, event_id=event_id)
                )
                expected[event_id] = {"topology": "support_triage", "text": text, "key": customer}
            else:
                shade = rng.choice(list(COLOURS))
                event = image_event(image_dir / f"{shade}.jpg", key=product, event_id=event_id)
                producer.send(products["input_topic"], event)
                expected[event_id] = {"topology": "product_images", "colour": shade, "key": product}

    results: list[Result] = []
    topics = [triage["output_topic"], triage["dead_letter_topic"]]
    topics += [products["output_topic"], products["dead_letter_topic"]]
    with ResultConsumer(kafka_bootstrap, topics) as consumer:
        results.extend(consumer.results(idle_timeout_s=60, limit=300))
        late = list(consumer.results(idle_timeout_s=3))  # a duplicate would show up here
    # Escalations get a projection (the route names its fields), review the whole output.
    with ResultConsumer(kafka_bootstrap, [triage["routes"][0]["topic"]]) as consumer:
        escalations = [
            Projection.model_validate_json(r.value) for r in consumer.records(idle_timeout_s=5)
        ]
    with ResultConsumer(kafka_bootstrap, [products["routes"][0]["topic"]]) as consumer:
        routed = list(consumer.results(idle_timeout_s=5))
    assert worker.alive(), worker.log_tail()

    # Exactly one result per event: outputs + dead letters == events sent.
    assert len(results) == 300, f"{len(results)} results for 300 events\n{worker.log_tail()}"
    assert late == []
    ids = Counter(r.event_id for r in results)
    assert not [i for i, c in ids.items() if c > 1 and i is not None]
    dead = [r for r in results if isinstance(r, DeadLetter)]
    outputs = [r for r in results if isinstance(r, Output)]
    by_id = {o.event_id: o for o in outputs}
    assert len(dead) == sum(1 for e in expected.values() if "dead" in e) >= 30

    store = org_copy(kafka_bootstrap, org_samples, "customers", "products")
    for letter in dead:
        key = letter.event_id if letter.event_id in expected else None
        if key is None:  # not JSON: no id to read
            assert (letter.stage, letter.error_kind) == ("decode", "not_json")
            assert letter.original_b64 is not None
            assert base64.b64decode(letter.original_b64) == b"{not json at all"
            continue
        assert (letter.stage, letter.error_kind) == expected[key]["dead"], letter
        assert letter.message
    # Routes: urgent tickets and photos that failed their check, each once, as its output.
    escalated = {
        o.event_id
        for o in outputs
        if o.topology == "support_triage" and o.call("classify").answer["priority"] == "urgent"
    }
    to_review = {
        o.event_id
        for o in outputs
        if o.topology == "product_images" and not o.call("policy_check").answer["compliant"]
    }
    assert escalated and to_review  # the simulator's answers take both ways
    assert sorted(r.event_id or "" for r in routed) == sorted(to_review)
    for copy in routed:
        assert isinstance(copy, Output) and copy == by_id[copy.event_id]
        assert copy.routes == ["review"]
    assert sorted(p.event_id for p in escalations) == sorted(escalated)
    for projection in escalations:
        output = by_id[projection.event_id]
        assert output.routes == ["escalations"] and projection.route == "escalations"
        assert projection.fields == {
            "priority": "urgent",
            "category": output.call("classify").answer["category"],
            "summary": output.call("summarize").answer,
            "reply": output.call("draft_reply").answer,
        }
        assert [c.call_id for c in projection.lineage] == [c.call_id for c in output.model_calls]
        assert projection.topology_version == output.topology_version
        assert (projection.source_partition, projection.source_offset) == (
            output.source_partition,
            output.source_offset,
        )
    assert all(o.routes == [] for o in outputs if o.event_id not in escalated | to_review)
    captioned = 0
    for output in outputs:
        want = expected[output.event_id]
        assert output.topology == want["topology"]
        assert output.topology_version == VERSIONS[output.topology]
        assert output.event_key == want["key"]
        # The calls that ran (product photos: caption and alt text only when compliant),
        # and the retrieval query's embedding.
        assert output.retrieval is not None and output.retrieval.embedding is not None
        assert output.totals.model_calls == len(output.calls) + 1
        assert len(output.calls) + len(output.skipped) == 3
        paid = [*output.calls, output.retrieval.embedding]
        assert output.totals.tokens_in == sum(c.tokens_in for c in paid) > 0
        assert len(output.retrieval.passages) == 3
        assert all(p.id.startswith("policies/POL-") for p in output.retrieval.passages)
        assert all(c.tokens_out > 0 and c.model == "gpt-4o-mini" for c in output.calls)
        record = store.get(
            "customers" if want["topology"] == "support_triage" else "products", output.event_key
        )
        assert output.org_record is not None
        assert output.org_record.version == (record.version if record else None)
        assert output.org_record.offset == (record.offset if record else None)
        if want["topology"] == "support_triage":
            summary = output.call("summarize")
            assert summary.prompt_version == "summarize-2"
            assert summary.answer.startswith(f"[sim gpt-4o-mini] re: {_head(str(want['text']))} #")
            classify = output.call("classify").answer
            assert classify["category"] in {"billing", "bug", "account", "feature_request", "other"}
            assert classify["priority"] in {"low", "normal", "high", "urgent"}
        else:
            assert [(i.width, i.height, i.original_width) for i in output.images] == [
                (1024, 768, 1600)
            ]
            compliant = output.call("policy_check").answer["compliant"]
            assert isinstance(compliant, bool)
            if not compliant:
                assert [call.name for call in output.calls] == ["policy_check"]
                assert [skip.name for skip in output.skipped] == ["caption", "alt_text"]
                continue
            assert [call.name for call in output.calls] == ["policy_check", "caption", "alt_text"]
            captioned += 1
            caption = output.call("caption").answer
            match = re.search(r"\[image 1024x768 RGB mean #([0-9a-f]{6})\]", caption)
            assert match, caption
            mean = bytes.fromhex(match.group(1))
            target = COLOURS[str(want["colour"])]
            assert all(abs(a - b) <= 3 for a, b in zip(mean, target, strict=True)), caption
    assert captioned > 0  # the simulator finds some photos compliant, some not
    store.close()
