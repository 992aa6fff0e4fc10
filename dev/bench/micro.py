"""Three hot paths of the pipeline, each measured against a baseline in the same process.

- image_path: the worker's image preparation (`prepare_image` + `data_url`) against plain
  decoding of the same JPEG, for a 3 MP and a 12 MP photo.
- contract_cost: the contracts (`parse_event` + `Output.model_dump_json`) against orjson
  reading and writing the same JSON.
- producer_sdk: the SDK's kafka-python producer against aiokafka with the same durability
  settings (acks=all, idempotent, linger 5 ms), on a real local broker.

The two sides of a comparison alternate (A B B A ...) so slow drift of the machine lands on
both; each scenario reports medians and its ratios in the shape `dev.bench.report`
documents, so `write_report` can turn them into a table and a chart.

    python -m dev.bench.micro [--only image_path,contract_cost,producer_sdk]
        [--bootstrap HOST:PORT] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import importlib.util
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from aiokafka import AIOKafkaProducer
from kafka import KafkaConsumer, TopicPartition
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from dev.bench.report import Ratio, machine, make_ratio, print_report
from llmflow.schemas.events import AnyEvent, ImageEvent, TextEvent, parse_event
from llmflow.schemas.outputs import ImageInfo, ModelCallResult, OrgRecordRef, Output, Totals
from llmflow.services.broker.local import LocalKafka
from llmflow.services.broker.topics import ensure_topics
from llmflow.services.images.prepare import (
    ImageLimits,
    decode_and_shrink,
    decode_only,
    encode,
    prepare_image,
    shrink_target,
)
from llmflow.services.sdk import image_event, text_event
from llmflow.services.sdk.producer import EventProducer

T = TypeVar("T")
SCENARIOS = ("image_path", "contract_cost", "producer_sdk")


def abba(sides: Sequence[T], rounds: int) -> list[tuple[int, T]]:
    """(round, side) pairs, the order reversed every other round: A B, B A, A B, ..."""
    order: list[tuple[int, T]] = []
    for round_ in range(rounds):
        this_round = sides if round_ % 2 == 0 else list(reversed(sides))
        order += [(round_, side) for side in this_round]
    return order


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median with the smallest and largest run, to show how noisy the machine was."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- image_path -----------------------------------------------------------------------------

ImageSide = Literal["decode_only", "full"]
IMAGE_SIDES: tuple[ImageSide, ...] = ("decode_only", "full")
IMAGE_SIZES: dict[str, tuple[int, int]] = {"3 MP": (2000, 1500), "12 MP": (4000, 3000)}
PHOTO_QUALITY = 90
NOISE_SIGMA = 6.0  # gives 0.2 bytes per pixel at quality 90, like a phone photo
IMAGE_RUNS_PER_SIDE = 5
IMAGE_TARGET = 0.6


def synthetic_photo(width: int, height: int, seed: int = 0) -> bytes:
    """A photo-like JPEG: colour gradients, soft-edged shapes and sensor-like noise."""
    rng = random.Random(seed)
    red = Image.linear_gradient("L").resize((width, height))
    green = Image.linear_gradient("L").rotate(90).resize((width, height))
    blue = Image.radial_gradient("L").resize((width, height))
    img = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randrange(width // 20, width // 3)
        y1 = y0 + rng.randrange(height // 20, height // 3)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = rng.choice(("ellipse", "rectangle", "line"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randrange(3, 30))
    img = img.filter(ImageFilter.GaussianBlur(2))  # lens softness: no razor-sharp edges
    noise = Image.merge("RGB", [Image.effect_noise((width, height), NOISE_SIGMA) for _ in "rgb"])
    img = ImageChops.add(img, noise, scale=1.0, offset=-128)  # noise is centred on 128
    buf = BytesIO()
    img.save(buf, "JPEG", quality=PHOTO_QUALITY)
    return buf.getvalue()


def draft_decoding(raw: bytes, limits: ImageLimits) -> dict[str, Any]:
    """Whether prepare_image lets libjpeg decode at reduced scale, and to what size.

    prepare_image shrinks by a whole factor when that lands within 10% of max_side
    (`shrink_target`); for a JPEG, libjpeg then decodes at 1/2, 1/4 or 1/8 scale.
    """
    with Image.open(BytesIO(raw)) as img:
        original = img.size
        target, factor = shrink_target(original, limits.max_side)
        applies = factor != 1
        if applies:
            img.draft("RGB", target)
        decoded = img.size
    share = decoded[0] * decoded[1] / (original[0] * original[1])
    return {
        "applies": applies,
        "target_size": list(target),
        "whole_factor": factor,
        "decoded_size": list(decoded),
        "scale": f"1/{round(original[0] / decoded[0])}",
        "decoded_pixel_share": share,
    }


def image_stages_ms(raw: bytes, limits: ImageLimits, reps: int = 3) -> dict[str, float]:
    """Median ms of prepare_image's own steps: decode and shrink, re-encode, base64."""
    samples: dict[str, list[float]] = {"decode_shrink": [], "encode": [], "base64": []}
    for _ in range(reps):
        t0 = time.perf_counter()
        with Image.open(BytesIO(raw)) as img:
            out, _ = decode_and_shrink(img, limits)
        t1 = time.perf_counter()
        data, _ = encode(out, limits)
        t2 = time.perf_counter()
        base64.b64encode(data).decode("ascii")
        t3 = time.perf_counter()
        for name, start, end in (("decode_shrink", t0, t1), ("encode", t1, t2), ("base64", t2, t3)):
            samples[name].append((end - start) * 1000)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def image_work(side: ImageSide, raw: bytes, limits: ImageLimits) -> Callable[[], object]:
    """One image's worth of work: decode only, or everything the worker does before sending."""
    if side == "decode_only":
        return lambda: decode_only(raw, limits)
    return lambda: prepare_image(raw, limits).data_url()


def timed(work: Callable[[], object], count: int) -> tuple[float, float]:
    """Wall and CPU seconds of `count` repetitions, after collecting the previous garbage."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(count):
        work()
    return time.perf_counter() - wall, time.process_time() - cpu


def image_explanation(
    label: str, draft: dict[str, Any], ratio: float, stages: dict[str, float], decode_ms: float
) -> str:
    """Say which reading of the full / decode-only ratio applies to this size, and why."""
    verdict = "meets" if ratio >= IMAGE_TARGET else "misses"
    steps = (
        f"Steps: decode and shrink {stages['decode_shrink']:.1f} ms, re-encode "
        f"{stages['encode']:.1f} ms, base64 {stages['base64']:.2f} ms; decode_only takes "
        f"{decode_ms:.1f} ms."
    )
    if draft["applies"]:
        return (
            f"{label}: draft decoding applies. A whole factor of {draft['whole_factor']} lands "
            f"near max_side, so libjpeg decodes at {draft['scale']} scale "
            f"({draft['decoded_size'][0]}x{draft['decoded_size'][1]}, "
            f"{draft['decoded_pixel_share']:.0%} of the pixels decode_only decodes) and the "
            "full path can beat decode-only (ratio > 1.0). Measured "
            f"{ratio:.2f}, which {verdict} the >= {IMAGE_TARGET} target. {steps}"
        )
    return (
        f"{label}: no draft decoding (no whole factor lands near max_side), so prepare_image "
        "decodes every pixel like decode_only and adds a LANCZOS resize, the re-encode and "
        f"base64: the ratio is below 1.0 by construction. Measured {ratio:.2f}, which "
        f"{verdict} the >= {IMAGE_TARGET} target. {steps}"
    )


def image_path(seconds_budget: float = 40) -> dict[str, Any]:
    """Images/s of decode-only and full preparation for a 3 MP and a 12 MP JPEG, one thread.

    The budget is shared by photo generation, warm-up and the measured runs; each measured
    run repeats one image enough times to last about 1/10 of its size's share.
    """
    started = time.perf_counter()
    limits = ImageLimits()
    photos = {
        label: synthetic_photo(w, h, seed=n)
        for n, (label, (w, h)) in enumerate(IMAGE_SIZES.items())
    }
    sizes: dict[str, Any] = {}
    ratios: list[Ratio] = []
    for n, (label, raw) in enumerate(photos.items()):
        works = {side: image_work(side, raw, limits) for side in IMAGE_SIDES}
        for work in works.values():
            work()  # warm-up: first-call costs (plugin import, allocator) stay out of the runs
        estimate = {
            side: statistics.median(timed(works[side], 1)[0] for _ in range(2))
            for side in IMAGE_SIDES
        }
        stages = image_stages_ms(raw, limits)
        left_s = seconds_budget - (time.perf_counter() - started)
        run_s = max(0.2, left_s / (len(photos) - n)) / (2 * IMAGE_RUNS_PER_SIDE)
        counts = {side: max(2, round(run_s / estimate[side])) for side in IMAGE_SIDES}

        runs: list[dict[str, Any]] = []
        for round_, side in abba(IMAGE_SIDES, IMAGE_RUNS_PER_SIDE):
            wall_s, cpu_s = timed(works[side], counts[side])
            runs.append(
                {
                    "side": side,
                    "round": round_,
                    "images": counts[side],
                    "wall_s": wall_s,
                    "cpu_s": cpu_s,
                    "images_per_s": counts[side] / wall_s,
                    "cpu_ms_per_image": cpu_s * 1000 / counts[side],
                }
            )
            progress(
                f"image_path {label:<5} round {round_} {side:<11} "
                f"{runs[-1]['images_per_s']:7.1f} images/s"
            )

        per_side: dict[str, dict[str, Any]] = {}
        for side in IMAGE_SIDES:
            mine = [r for r in runs if r["side"] == side]
            rate = spread([r["images_per_s"] for r in mine])
            per_side[side] = {
                "images_per_s": rate["median"],
                "images_per_s_min": rate["min"],
                "images_per_s_max": rate["max"],
                "cpu_ms_per_image": statistics.median(r["cpu_ms_per_image"] for r in mine),
                "runs": len(mine),
                "images_per_run": counts[side],
            }
        full, decode = per_side["full"]["images_per_s"], per_side["decode_only"]["images_per_s"]
        ratio = full / decode
        draft = draft_decoding(raw, limits)
        prepared = prepare_image(raw, limits)
        width, height = IMAGE_SIZES[label]
        sizes[label] = {
            "width": width,
            "height": height,
            "jpeg_bytes": len(raw),
            "decode_only": per_side["decode_only"],
            "full": per_side["full"],
            "ratio_full_over_decode_only": ratio,
            "target": IMAGE_TARGET,
            "target_met": ratio >= IMAGE_TARGET,
            "draft_decoding": draft,
            "explanation": image_explanation(
                label, draft, ratio, stages, 1000 / per_side["decode_only"]["images_per_s"]
            ),
            "stages_ms": stages,
            "prepared": {
                "width": prepared.width,
                "height": prepared.height,
                "jpeg_bytes": len(prepared.data),
                "data_url_chars": len(prepared.data_url()),
            },
            "runs": runs,
        }
        ratios.append(
            make_ratio(
                f"full / decode-only, {label}",
                full,
                decode,
                unit="images/s",
                target=IMAGE_TARGET,
            )
        )
    return {
        "params": {
            "seconds_budget": seconds_budget,
            "sizes": {label: list(size) for label, size in IMAGE_SIZES.items()},
            "photo_jpeg_quality": PHOTO_QUALITY,
            "noise_sigma": NOISE_SIGMA,
            "runs_per_side": IMAGE_RUNS_PER_SIDE,
            "order": "decode_only/full alternating, reversed every other round",
            "threads": 1,
            "limits": {
                "max_side": limits.max_side,
                "max_pixels": limits.max_pixels,
                "jpeg_quality": limits.jpeg_quality,
            },
            "decode_only": "services.images.prepare.decode_only(raw)",
            "full": "prepare_image(raw, ImageLimits()).data_url()",
        },
        "sizes": sizes,
        "note": " ".join(s["explanation"] for s in sizes.values()),
        "elapsed_s": time.perf_counter() - started,
        "ratios": ratios,
    }


# --- contract_cost --------------------------------------------------------------------------

ContractSide = Literal["pydantic", "orjson"]
CONTRACT_SIDES: tuple[ContractSide, ...] = ("pydantic", "orjson")
CONTRACT_ROUNDS = 8  # runs per side
POOL = 100  # distinct events, cycled
IMAGE_EVERY = 10  # one image event in ten
BASE_TIME = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)

TICKETS = (
    "Hello, I was charged twice for order {n} on my credit card this morning. The first "
    "payment shows as pending and the second one as completed. Could you please refund the "
    "duplicate charge as soon as possible? I have attached nothing because your form does "
    "not allow files. My customer number is C-{n:06d}. Thanks, Maria",
    "The export to CSV has stopped working since yesterday's update. When I click 'Export' "
    "on the reports page, the spinner runs for a minute and then I get error 502. This "
    "blocks our month-end closing, so it is quite urgent for us. Browser: Firefox 128 on "
    "Windows 11. Report id R-{n:05d}. Regards, Jonas",
    "Hi team, I'd like to move our account from the Team plan to Enterprise before the "
    "renewal on the 1st. We need SSO with our Azure AD and an invoice in EUR instead of "
    "USD. Who is the right person to talk to about the contract and the data processing "
    "agreement? Account A-{n:05d}. Best, Priya from finance",
)
ATTRIBUTES = (
    {"channel": "email", "priority": "high", "locale": "en-GB", "product": "billing"},
    {"channel": "web", "priority": "normal", "locale": "de-DE", "product": "reports"},
    {"channel": "chat", "priority": "low", "locale": "en-IN", "product": "accounts"},
)
REPLY = (
    "Dear {name}, thank you for reaching out and sorry for the trouble. I have checked your "
    "account and can confirm what you describe. I have escalated this to our specialist "
    "team with reference {n}, and you will hear from them within one business day. In the "
    "meantime, nothing is needed from your side; if anything changes, simply reply to this "
    "message and it will reach the same team. Kind regards, the support team"
)


def sample_event(n: int) -> AnyEvent:
    """A support ticket (about 300 characters), or every IMAGE_EVERY-th a product photo URL."""
    common: dict[str, Any] = {
        "key": f"customer-{n % 37:05d}",
        "tenant": f"tenant-{n % 5}",
        "event_id": f"evt-{uuid.UUID(int=n, version=4)}",
    }
    attributes = ATTRIBUTES[n % len(ATTRIBUTES)]
    if n % IMAGE_EVERY == IMAGE_EVERY - 1:
        url = f"https://cdn.example.com/catalog/{n % 977:04d}/photo-{n:06d}.jpg"
        event: AnyEvent = image_event(url, source="catalog-uploader", **common)
        return ImageEvent.model_validate({**event.model_dump(), "attributes": attributes})
    text = TICKETS[n % len(TICKETS)].format(n=100_000 + n)
    event = text_event(text, source="helpdesk", **common)
    return TextEvent.model_validate({**event.model_dump(), "attributes": attributes})


def _call(
    event: AnyEvent, name: str, prompt_version: str, answer: Any, tokens: tuple[int, int]
) -> ModelCallResult:
    digest = hashlib.sha256(f"{event.id}\x1f{name}\x1f{prompt_version}".encode()).hexdigest()
    kind = "vision" if isinstance(event, ImageEvent) else "chat"
    return ModelCallResult(
        name=name,
        kind=kind,
        call_id=digest[:32],
        model="gpt-4o-mini-2024-07-18",
        prompt_version=prompt_version,
        answer=answer,
        tokens_in=tokens[0],
        tokens_out=tokens[1],
        latency_ms=412.5 + len(name) * 31.7,
        cost_usd=(tokens[0] * 0.15 + tokens[1] * 0.6) / 1e6,
    )


def sample_output(event: AnyEvent, n: int) -> Output:
    """The output the matching topology would publish: three model calls and their totals."""
    if isinstance(event, ImageEvent):
        topology, table = "product_images", "products"
        calls = [
            _call(
                event, "caption", "caption-2", "Soft merino crew-neck in forest green.", (921, 14)
            ),
            _call(
                event,
                "alt_text",
                "alt-1",
                "A green knitted sweater folded on a white table.",
                (903, 13),
            ),
            _call(event, "policy_check", "policy-4", {"compliant": True, "issues": []}, (958, 11)),
        ]
        images = [
            ImageInfo(
                sha256=hashlib.sha256(event.id.encode()).hexdigest(),
                width=1024,
                height=768,
                original_width=4000,
                original_height=3000,
            )
        ]
    else:
        topology, table = "support_triage", "customers"
        calls = [
            _call(
                event,
                "classify",
                "classify-3",
                {"category": "billing", "priority": "high", "sentiment": "negative"},
                (187, 21),
            ),
            _call(
                event,
                "summarize",
                "summarize-2",
                "Customer reports a duplicate card charge for one order and asks for a refund "
                "of the second payment.",
                (142, 24),
            ),
            _call(event, "draft_reply", "reply-5", REPLY.format(name="Maria", n=n), (233, 96)),
        ]
        images = []
    received = BASE_TIME + timedelta(seconds=n)
    return Output(
        event_id=event.id,
        event_key=event.key,
        tenant=event.tenant,
        source_topic="support.tickets" if images == [] else "catalog.images",
        source_partition=n % 4,
        source_offset=10_000 + n,
        topology=topology,
        topology_version="1.0.0",
        org_record=OrgRecordRef(
            table=table, key=event.key, version=hashlib.sha256(event.key.encode()).hexdigest()
        ),
        images=images,
        calls=calls,
        totals=Totals.of(calls, 1302.417),
        worker="worker-7f9c:4242",
        received_at=received,
        produced_at=received + timedelta(milliseconds=1302),
    )


def contract_run(
    side: ContractSide, raws: Sequence[bytes], outputs: Sequence[Output], dicts: Sequence[Any]
) -> tuple[float, float]:
    """Seconds to read every event, then seconds to write every output, as bytes."""
    gc.collect()
    if side == "pydantic":
        t0 = time.perf_counter()
        for raw in raws:
            parse_event(raw)
        t1 = time.perf_counter()
        for output in outputs:
            output.model_dump_json().encode()  # the worker publishes bytes
        t2 = time.perf_counter()
    else:
        t0 = time.perf_counter()
        for raw in raws:
            orjson.loads(raw)
        t1 = time.perf_counter()
        for data in dicts:
            orjson.dumps(data)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def contract_cost(events: int = 20000) -> dict[str, Any]:
    """µs per event to validate an event and serialise its output: pydantic against orjson."""
    started = time.perf_counter()
    pool_events = [sample_event(n) for n in range(POOL)]
    pool_raws = [event.model_dump_json().encode() for event in pool_events]
    pool_outputs = [sample_output(event, n) for n, event in enumerate(pool_events)]
    pool_dicts = [output.model_dump(mode="json") for output in pool_outputs]
    same_json = all(
        orjson.loads(output.model_dump_json()) == orjson.loads(orjson.dumps(data))
        for output, data in zip(pool_outputs, pool_dicts, strict=True)
    ) and all(parse_event(raw).id == orjson.loads(raw)["id"] for raw in pool_raws)
    raws = [pool_raws[i % POOL] for i in range(events)]
    outputs = [pool_outputs[i % POOL] for i in range(events)]
    dicts = [pool_dicts[i % POOL] for i in range(events)]

    warm = max(1, events // 10)
    for side in CONTRACT_SIDES:
        contract_run(side, raws[:warm], outputs[:warm], dicts[:warm])
    runs: list[dict[str, Any]] = []
    for round_, side in abba(CONTRACT_SIDES, CONTRACT_ROUNDS):
        parse_s, dump_s = contract_run(side, raws, outputs, dicts)
        runs.append(
            {
                "side": side,
                "round": round_,
                "parse_us": parse_s * 1e6 / events,
                "serialise_us": dump_s * 1e6 / events,
                "us_per_event": (parse_s + dump_s) * 1e6 / events,
            }
        )
        progress(f"contract_cost round {round_} {side:<8} {runs[-1]['us_per_event']:6.2f} µs/event")

    medians: dict[str, dict[str, Any]] = {}
    for side in CONTRACT_SIDES:
        mine = [r for r in runs if r["side"] == side]
        total = spread([r["us_per_event"] for r in mine])
        medians[side] = {
            "us_per_event": total["median"],
            "us_per_event_min": total["min"],
            "us_per_event_max": total["max"],
            "parse_us": statistics.median(r["parse_us"] for r in mine),
            "serialise_us": statistics.median(r["serialise_us"] for r in mine),
            "runs": len(mine),
        }
    pyd, orj = medians["pydantic"], medians["orjson"]
    ratios = [
        make_ratio(
            f"{label} (pydantic / orjson)",
            pyd[key],
            orj[key],
            unit="µs/event",
            better="lower",
        )
        for label, key in (
            ("parse + serialise", "us_per_event"),
            ("parse only", "parse_us"),
            ("serialise only", "serialise_us"),
        )
    ]
    times = ratios[0]["ratio"]
    return {
        "params": {
            "events": events,
            "distinct_events": POOL,
            "image_events_share": 1 / IMAGE_EVERY,
            "rounds": CONTRACT_ROUNDS,
            "order": "pydantic/orjson alternating, reversed every other round",
            "pydantic": "schemas.events.parse_event(raw) + Output.model_dump_json().encode()",
            "orjson": "orjson.loads(raw) + orjson.dumps(output.model_dump(mode='json'))",
        },
        "event_bytes_mean": statistics.mean(len(raw) for raw in pool_raws),
        "text_chars_mean": statistics.mean(
            len(e.text) for e in pool_events if isinstance(e, TextEvent)
        ),
        "output_bytes_mean": statistics.mean(len(o.model_dump_json()) for o in pool_outputs),
        "same_json": same_json,
        "pydantic": pyd,
        "orjson": orj,
        "pydantic_over_orjson": times,
        "runs": runs,
        "note": (
            f"Validating an event and serialising its output costs {pyd['us_per_event']:.1f} µs"
            f" with the contracts against {orj['us_per_event']:.1f} µs for orjson without"
            f" validation ({times:.1f}x). Outputs are built beforehand; only the dump is timed."
        ),
        "elapsed_s": time.perf_counter() - started,
        "ratios": ratios,
    }


# --- producer_sdk ---------------------------------------------------------------------------

ProducerSide = Literal["kafka-python", "aiokafka"]
PRODUCER_SIDES: tuple[ProducerSide, ...] = ("kafka-python", "aiokafka")
PRODUCER_ROUNDS = 2
DURABILITY: dict[str, Any] = {"acks": "all", "enable_idempotence": True, "linger_ms": 5}


def payloads(messages: int, size: int, seed: int = 7) -> list[bytes]:
    """Distinct values of exactly `size` bytes: a message number, then random bytes."""
    filler = random.Random(seed).randbytes(size)
    return [(f"{n:08d}".encode() + filler)[:size] for n in range(messages)]


def kafka_python_run(bootstrap: str, topic: str, values: Sequence[bytes]) -> dict[str, Any]:
    """The SDK producer as `llmflow produce` drives it: send_raw every value, then flush."""
    producer = EventProducer(bootstrap, client_id="llmflow-bench-kafka-python")
    try:
        producer.send_raw(topic, b"warm-up").get(timeout=30)  # metadata and producer id
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        futures = [producer.send_raw(topic, value) for value in values]
        producer.flush()
        wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
        failed = sum(1 for future in futures if future.failed())
    finally:
        producer.close()
    return {"wall_s": wall_s, "cpu_s": cpu_s, "failed": failed}


async def _aiokafka_run(bootstrap: str, topic: str, values: Sequence[bytes]) -> dict[str, Any]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, client_id="llmflow-bench-aiokafka", **DURABILITY
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up")
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        futures = [await producer.send(topic, value) for value in values]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        wall_s, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await producer.stop()
    failed = sum(1 for outcome in outcomes if isinstance(outcome, BaseException))
    return {"wall_s": wall_s, "cpu_s": cpu_s, "failed": failed}


def aiokafka_run(bootstrap: str, topic: str, values: Sequence[bytes]) -> dict[str, Any]:
    """aiokafka with the SDK's durability settings: send every value, then await them all."""
    return asyncio.run(_aiokafka_run(bootstrap, topic, values))


def end_offset(bootstrap: str, topic: str) -> int:
    """Records in partition 0 of `topic`: checks that every message arrived exactly once."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="llmflow-bench-check")
    try:
        partition = TopicPartition(topic, 0)
        return int(consumer.end_offsets([partition])[partition])
    finally:
        consumer.close()


def producer_sdk(messages: int = 20000, size: int = 1024, *, bootstrap: str) -> dict[str, Any]:
    """Messages/s of the SDK producer (kafka-python) against aiokafka, same durability."""
    started = time.perf_counter()
    values = payloads(messages, size)
    drivers: dict[ProducerSide, Callable[[str, str, Sequence[bytes]], dict[str, Any]]] = {
        "kafka-python": kafka_python_run,
        "aiokafka": aiokafka_run,
    }
    runs: list[dict[str, Any]] = []
    for round_, side in abba(PRODUCER_SIDES, PRODUCER_ROUNDS):
        topic = f"bench.producer.{side}.{round_}.{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, [topic], 1)
        outcome = drivers[side](bootstrap, topic, values)
        stored = end_offset(bootstrap, topic)
        runs.append(
            {
                "side": side,
                "round": round_,
                "topic": topic,
                **outcome,
                "messages_per_s": messages / outcome["wall_s"],
                "cpu_us_per_message": outcome["cpu_s"] * 1e6 / messages,
                "records_in_topic": stored,
                "all_delivered_once": outcome["failed"] == 0 and stored == messages + 1,
            }
        )
        progress(f"producer_sdk round {round_} {side:<12} {runs[-1]['messages_per_s']:8.0f} msg/s")

    medians: dict[str, dict[str, Any]] = {}
    for side in PRODUCER_SIDES:
        mine = [r for r in runs if r["side"] == side]
        rate = spread([r["messages_per_s"] for r in mine])
        medians[side] = {
            "messages_per_s": rate["median"],
            "messages_per_s_min": rate["min"],
            "messages_per_s_max": rate["max"],
            "mb_per_s": rate["median"] * size / 1e6,
            "cpu_us_per_message": statistics.median(r["cpu_us_per_message"] for r in mine),
            "runs": len(mine),
        }
    kp, aio = medians["kafka-python"], medians["aiokafka"]
    ratio = make_ratio(
        "messages/s (kafka-python / aiokafka)",
        kp["messages_per_s"],
        aio["messages_per_s"],
        unit="msg/s",
    )
    return {
        "params": {
            "messages": messages,
            "size": size,
            "bootstrap": bootstrap,
            "rounds": PRODUCER_ROUNDS,
            "partitions": 1,
            "durability": DURABILITY,
            "order": "kafka-python/aiokafka alternating, reversed every other round",
            "kafka-python": "services.sdk.producer.EventProducer.send_raw + flush",
            "aiokafka": "AIOKafkaProducer.send per message, then gather all delivery futures",
            "timed": "after one acknowledged warm-up message per producer, until all acks",
            # Without the optional `crc32c` package kafka-python checksums batches in Python.
            "kafka_python_crc32c": "C (crc32c package)"
            if importlib.util.find_spec("crc32c")
            else "pure Python (kafka.record._crc32c)",
        },
        "kafka-python": kp,
        "aiokafka": aio,
        "all_delivered_once": all(r["all_delivered_once"] for r in runs),
        "runs": runs,
        "note": (
            f"With acks=all, idempotence and linger 5 ms on one local partition, the SDK's "
            f"kafka-python producer sends {kp['messages_per_s']:,.0f} msg/s of {size} B and "
            f"aiokafka {aio['messages_per_s']:,.0f} msg/s ({ratio['ratio']:.2f}x); client CPU "
            f"{kp['cpu_us_per_message']:.0f} vs {aio['cpu_us_per_message']:.0f} µs/message."
        ),
        "elapsed_s": time.perf_counter() - started,
        "ratios": [ratio],
    }


# --- command --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dev.bench.micro",
        description="Image preparation, contract cost and producer throughput, each against "
        "a baseline.",
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})",
    )
    parser.add_argument("--bootstrap", help="use this broker instead of starting a local one")
    parser.add_argument("--out", type=Path, help="also write results.json, .md and chart.png")
    parser.add_argument("--image-seconds", type=float, default=40.0)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := sorted(set(args.only) - set(SCENARIOS)):
        parser.error(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    if args.image_seconds <= 0 or args.events < 1 or args.messages < 1:
        parser.error("--image-seconds must be > 0, --events and --messages >= 1")
    return args


def run_producer(args: argparse.Namespace) -> dict[str, Any]:
    """On the given broker, or on a local one that lives only for this scenario."""
    if args.bootstrap:
        return producer_sdk(args.messages, bootstrap=args.bootstrap)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    try:
        progress(f"starting a local Kafka broker in {data_dir}")
        with LocalKafka(data_dir) as kafka:
            return producer_sdk(args.messages, bootstrap=kafka.bootstrap_servers)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios: dict[str, Any] = {}
    results: dict[str, Any] = {"machine": machine(), "scenarios": scenarios}
    if "image_path" in args.only:
        scenarios["image_path"] = image_path(args.image_seconds)
    if "contract_cost" in args.only:
        scenarios["contract_cost"] = contract_cost(args.events)
    if "producer_sdk" in args.only:
        scenarios["producer_sdk"] = run_producer(args)
    print_report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
