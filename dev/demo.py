"""`make demo` (`python -m dev.demo`): the whole system on one machine, end to end, then a
summary.

Starts what is not given (Kafka unless KAFKA_BOOTSTRAP_SERVERS is set, the model
simulator unless OPENAI_BASE_URL is set), publishes the sample org data to its topics
(the policies embedded through the model endpoint), runs a worker with both shipped
topologies, publishes a mixed batch with a few bad events, prints every result as it
arrives, then tries the shipped candidate of support_triage on those tickets (replay into
its shadow topic, compare with the live outputs), and stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from PIL import Image, ImageDraw

from dev.launch import Child, start_modelsim, start_worker, worker_env
from dev.samples import CAPTIONS, TICKETS
from dev.topologies import TopologyCopy, candidate_copy, copy_topology
from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.events import AnyEvent
from llmflow.schemas.outputs import Output
from llmflow.schemas.parked import Parked
from llmflow.services.broker.local import LocalKafka, free_port
from llmflow.services.broker.topics import ensure_topics
from llmflow.services.sdk import EventProducer, ResultConsumer, image_event, text_event
from llmflow.services.sdk.consumer import Result
from llmflow.services.sdk.events import text_image_event
from llmflow.services.shadow.compare import compare_topics
from llmflow.services.shadow.replay import ReplayOptions, replay
from llmflow.services.shadow.report import chart, markdown
from llmflow.services.worker.orgdata import publish_samples
from llmflow.services.worker.settings import Settings
from llmflow.topologies.spec import Topology

DEMO_DIR = Path(".llmflow/demo")


def _photo(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A synthetic product photo: a gradient backdrop and a few shapes."""
    rng = random.Random(seed)
    top, bottom = (
        [rng.randrange(40, 230) for _ in range(3)],
        [rng.randrange(40, 230) for _ in range(3)],
    )
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    backdrop = Image.new("RGB", size, tuple(top))
    img = Image.composite(Image.new("RGB", size, tuple(bottom)), backdrop, img.convert("L"))
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(3):
        x, y = rng.randrange(w // 2), rng.randrange(h // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x, y, x + w // 3, y + h // 3), fill=colour)
    img.save(path, "JPEG", quality=88)
    return path


def _prepare_images(image_dir: Path) -> dict[str, Path]:
    image_dir.mkdir(parents=True, exist_ok=True)
    photos = {f"photo{n}": _photo(image_dir / f"photo{n}.jpg", (2400, 1800), n) for n in range(4)}
    photos["small"] = _photo(image_dir / "small.jpg", (640, 480), 99)
    # A decompression bomb in miniature: 9000x6000 = 54 MP of one colour, a small file.
    bomb = image_dir / "bomb.png"
    Image.new("L", (9000, 6000), 0).save(bomb, "PNG")
    photos["bomb"] = bomb
    broken = image_dir / "broken.jpg"
    data = photos["photo0"].read_bytes()
    broken.write_bytes(data[: len(data) // 3])  # truncated download
    photos["broken"] = broken
    return photos


def _publish(
    producer: EventProducer,
    specs: list[Topology],
    photos: dict[str, Path],
    events: int,
    bad: int,
) -> tuple[int, int]:
    """Send `events` good events and `bad` bad ones; returns (good, bad) counts."""
    tickets, images = specs[0].input_topic, specs[1].input_topic
    rng = random.Random(2026)
    event: AnyEvent
    for n in range(events):
        tenant = rng.choice(["acme-eu", "acme-us"])
        if n % 3 == 2:
            product = f"P-{2001 + n % 24}"
            photo = photos[f"photo{n % 4}"]
            if n % 2:
                event = image_event(photo, key=product, source="catalog", tenant=tenant)
            else:
                text = rng.choice(CAPTIONS)
                event = text_image_event(text, [photos["small"]], key=product, tenant=tenant)
            producer.send(images, event)
        else:
            customer = f"C-{1001 + n % 24}"
            event = text_event(rng.choice(TICKETS), key=customer, source="helpdesk", tenant=tenant)
            producer.send(tickets, event)
    kinds = ["not_json", "schema", "bomb", "broken"]
    for n in range(bad):
        kind = kinds[n % len(kinds)]
        if kind == "not_json":
            producer.send_raw(tickets, b'{"id": "oops", "kind": "text", ', key="C-1001")
        elif kind == "schema":
            producer.send_raw(tickets, b'{"id": "no-text", "kind": "text", "key": "C-1002"}')
        else:
            producer.send(
                images, image_event(photos[kind].as_uri(), key="P-2001", source="catalog")
            )
    return events, bad


def _show(result: Result) -> str:
    if isinstance(result, Parked):
        return f"  PARK  {result.topology:<15} {result.event_id:<38} {result.message}"
    if isinstance(result, DeadLetter):
        return (
            f"  DEAD  {result.topology:<15} {result.event_id or '(no id)':<38} "
            f"{result.stage}/{result.error_kind}: {result.message[:90]}"
        )
    answers = []
    for call in result.calls:
        text = call.answer if isinstance(call.answer, str) else str(call.answer)
        answers.append(f"      {call.name:<13} {call.model} {call.prompt_version}: {text[:100]}")
    for skipped in result.skipped:
        why = f"needs {skipped.because}, skipped" if skipped.because else "skipped"
        answers.append(f"      {skipped.name:<13} {why}: when {skipped.when}")
    org = result.org_record
    lineage = f"{org.table}/{org.key}@{org.version}" if org else "-"
    head = (
        f"  OK    {result.topology:<15} {result.event_id:<38} org={lineage} "
        f"tokens={result.totals.tokens_in}+{result.totals.tokens_out} "
        f"{result.totals.latency_ms:.0f} ms"
    )
    lines = [head]
    if result.retrieval is not None:
        found = result.retrieval.passages
        docs = ", ".join(f"{p.id} ({p.score:.3f})" for p in found) if found else "(none found)"
        lines.append(f"      docs: {docs}")
    return "\n".join([*lines, *answers])


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run_demo(events: int = 24, bad: int = 4) -> int:
    run_dir = DEMO_DIR
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    suffix = uuid.uuid4().hex[:6]
    with ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            print(f"Kafka: {bootstrap} (from KAFKA_BOOTSTRAP_SERVERS)")
        else:
            print("Kafka: starting a local single-node Apache Kafka (KRaft) ...", flush=True)
            broker = stack.enter_context(LocalKafka(run_dir / "kafka"))
            bootstrap = broker.bootstrap_servers
            print(f"Kafka: {bootstrap}")
        base_url = os.environ.get("OPENAI_BASE_URL")
        if base_url:
            api_key = os.environ.get("OPENAI_API_KEY", "")
            print(f"Models: {base_url} (from OPENAI_BASE_URL)")
        else:
            sim: Child = start_modelsim(
                free_port(), run_dir / "logs", ["--latency-ms", "150", "--jitter-ms", "50"]
            )
            stack.callback(sim.stop)
            base_url, api_key = sim.extra["base_url"], "simulator"
            print(f"Models: {base_url} (llmflow model SIMULATOR: deterministic answers, 150±50 ms)")

        # Workers read org data from its compacted topics, each into its own copy.
        print("Org data: publishing the samples ...", flush=True)
        settings = Settings(
            kafka_bootstrap_servers=bootstrap, openai_base_url=base_url, openai_api_key=api_key
        )
        for report in publish_samples(settings):
            print(f"Org data: {report}")

        photos = _prepare_images((run_dir / "images").resolve())
        # The shipped topologies with topics unique to this run, so reruns never mix.
        copies: list[TopologyCopy] = [
            copy_topology(name, run_dir, f"demo-{suffix}")
            for name in ("support_triage", "product_images")
        ]
        paths = [c.path for c in copies]
        specs = [c.topology for c in copies]
        ensure_topics(bootstrap, [t for s in specs for t in s.topics], partitions=4)
        env = worker_env(
            bootstrap,
            base_url,
            f"llmflow-demo-{suffix}",
            api_key,
            data_dir=run_dir / "worker",
            image_root=(run_dir / "images").resolve(),
        )
        worker = start_worker("worker", paths, run_dir / "logs", env)
        stack.callback(worker.stop)
        print(f"Worker: pid {worker.pid} running {', '.join(s.name for s in specs)}")

        started = time.monotonic()
        with EventProducer(bootstrap) as producer:
            good, bad_sent = _publish(producer, specs, photos, events, bad)
        print(f"Published {good} events and {bad_sent} bad ones. Results as they arrive:\n")

        results = [t for s in specs for t in (s.output_topic, s.dead_letter_topic, s.parked)]
        outputs: list[Output] = []
        dead: list[DeadLetter] = []
        parked: list[Parked] = []
        with ResultConsumer(bootstrap, results) as consumer:
            for result in consumer.results(idle_timeout_s=60, limit=good + bad_sent):
                if isinstance(result, Output):
                    outputs.append(result)
                elif isinstance(result, DeadLetter):
                    dead.append(result)
                else:
                    parked.append(result)
                print(_show(result), flush=True)
                print(f"  ... {len(outputs) + len(dead)}/{good + bad_sent}", flush=True)
        elapsed = time.monotonic() - started
        if not worker.alive():
            print(f"worker died:\n{worker.log_tail()}")
        _summary(good, bad_sent, outputs, dead, parked, elapsed)
        ok = len(outputs) == good and len(dead) == bad_sent
        tried = ok and _try_candidate(settings, copies[0], run_dir)
    if not ok:
        print("\nDemo INCOMPLETE: not every event was answered once (see above).")
    elif not tried:
        print("\nDemo INCOMPLETE: the candidate's replay or comparison failed (see above).")
    else:
        print("\nDemo complete: every event answered once, the candidate replayed and compared.")
    ok = ok and tried
    return 0 if ok else 1


def _summary(
    good: int,
    bad: int,
    outputs: list[Output],
    dead: list[DeadLetter],
    parked: list[Parked],
    elapsed: float,
) -> None:
    latencies = [o.totals.latency_ms for o in outputs]
    calls = sum(o.totals.model_calls for o in outputs)
    skipped = sum(len(o.skipped) for o in outputs)
    print(
        "\nSummary\n"
        f"  events published   {good + bad} ({good} good, {bad} bad)\n"
        f"  outputs            {len(outputs)}\n"
        f"  dead letters       {len(dead)}\n"
        f"  parked             {len(parked)}\n"
        f"  model calls        {calls} ({skipped} skipped by a condition)\n"
        f"  tokens             {sum(o.totals.tokens_in for o in outputs)} in, "
        f"{sum(o.totals.tokens_out for o in outputs)} out, "
        f"{sum(o.totals.cost_usd for o in outputs):.6f} USD at list prices\n"
        f"  latency per event  p50 {_percentile(latencies, 50):.0f} ms, "
        f"p95 {_percentile(latencies, 95):.0f} ms\n"
        f"  wall time          {elapsed:.1f} s"
    )


def _try_candidate(settings: Settings, live: TopologyCopy, run_dir: Path) -> bool:
    """Replay the tickets just answered through `topologies/candidates/support_triage.yaml`
    into its shadow topic, and compare the two versions (README: "Trying a candidate")."""
    candidate = candidate_copy(live.path, run_dir / "candidates")
    spec = candidate.topology
    print(
        f"\nCandidate: replaying {live.topology.input_topic} through {spec.name} "
        f"v{spec.version} (topologies/candidates/) into {spec.shadow_output_topic} ..."
    )
    progress = replay(
        settings.model_copy(update={"data_dir": run_dir / "replay"}),
        spec,
        ReplayOptions(offsets={None: (None, None)}),
    )
    print(f"  {progress.line()}")
    topics = [spec.output_topic, spec.dead_letter_topic, spec.parked]
    report = compare_topics(
        settings, spec, shadow_topic=spec.shadow_output_topic, live_topics=topics
    )
    out = run_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(report))
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    chart(report, out / "report.png")
    sides = report["sides"]
    print(
        f"  compared {report['events']['compared']} events, live v{report['head']['live_version']}"
        f" against shadow v{spec.version}; cost {sides['live']['cost_usd']:.6f} -> "
        f"{sides['shadow']['cost_usd']:.6f} USD, escalations "
        f"{sides['live']['routes'].get('escalations', 0)} -> "
        f"{sides['shadow']['routes'].get('escalations', 0)}"
    )
    for name, call in report["calls"].items():
        agreement = ", ".join(f"{f} {v:.0%}" for f, v in call["field_agreement"].items())
        similar = call["similarity_mean"]
        said = agreement or (f"text similarity {similar:.2f}" if similar is not None else "")
        print(f"    {name:<12} {call['exact_match']:.0%} identical; {said}")
    print(f"  report: {out}/report.md, report.json, report.png")
    return progress.done == progress.total and report["events"]["compared"] > 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.demo", description=__doc__)
    parser.add_argument("--events", type=int, default=24, help="good events to publish")
    parser.add_argument("--bad", type=int, default=4, help="bad events to publish")
    args = parser.parse_args(argv)
    return run_demo(events=args.events, bad=args.bad)


if __name__ == "__main__":
    sys.exit(main())
