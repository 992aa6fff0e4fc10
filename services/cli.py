"""The `llmflow` command: one entry point for every process and tool of the pipeline (the
model simulator, a stand-in for a model endpoint, is `llmflow-modelsim`)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmflow.errors import LlmflowError


def _kafka(settings: Any) -> str:
    """The bootstrap servers of `settings`, once the broker takes our login: a refused login
    or a wrong protocol would otherwise surface only when a client gives up (30 s and more).
    Commands call it after checking their own arguments, just before Kafka is needed."""
    from llmflow.services.worker.preflight import broker_problem

    servers: str = settings.kafka_bootstrap_servers
    if problem := broker_problem(servers):
        raise LlmflowError(problem)
    return servers


def _settings(**overrides: Any) -> Any:
    from llmflow.services.worker.settings import Settings

    # Settings are frozen: command-line values are folded in at construction.
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# --- kafka -------------------------------------------------------------------------------


def cmd_kafka_fetch(args: argparse.Namespace) -> int:
    from llmflow.services.broker.local import fetch_kafka

    print(f"Kafka jars in {fetch_kafka()}")
    return 0


def cmd_kafka_start(args: argparse.Namespace) -> int:
    from llmflow.services.broker.local import LocalKafka

    # A folder started before keeps its cluster, records, port and security (see
    # LocalKafka.start); without --secure a folder first started with it is secure still.
    broker = LocalKafka(Path(args.data_dir), port=args.port, secure=args.secure or None).start()
    try:
        environment = broker.environment()
        if broker.secure:  # what a client needs, to paste into a shell
            lines = [f"export {name}={shlex.quote(value)}" for name, value in environment.items()]
        else:
            lines = [f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}"]
        print("\n".join(lines), flush=True)
        _wait_for_signal()
    finally:
        broker.stop()
    return 0


def _wait_for_signal() -> None:
    stop = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop:
        time.sleep(0.2)


# --- topologies ----------------------------------------------------------------------------


def cmd_topology_validate(args: argparse.Namespace) -> int:
    from llmflow.topologies.loader import TopologyError, load_topology

    failed = 0
    for path in args.files:
        try:
            topology = load_topology(path)
        except TopologyError as exc:
            failed += 1
            print("\n".join(exc.problems), file=sys.stderr)
            continue
        calls = ", ".join(
            f"{c.name}({c.kind}:{c.model}{' after ' + '+'.join(c.needs) if c.needs else ''})"
            for c in topology.calls
        )
        routes = "".join(f" (+ {r.name}: {r.topic})" for r in topology.routes)
        print(
            f"{path}: ok - {topology.name} v{topology.version}: "
            f"{topology.input_topic} -> [{calls}] -> {topology.output_topic}{routes}"
        )
    return 1 if failed else 0


# --- worker --------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from llmflow.services.worker.preflight import preflight
    from llmflow.topologies.loader import load_topology

    settings = _settings(app_id=args.app_id, concurrency=args.concurrency)
    topologies = [load_topology(path) for path in args.topology]
    if settings.preflight:
        # A wrong broker, endpoint or key stops the worker now, one line per problem.
        problems = preflight(settings, topologies)
        for problem in problems:
            print(f"llmflow worker: {problem}", file=sys.stderr)
        if problems:
            return 2

    from llmflow.services.worker.app import run
    from llmflow.services.worker.bootstrap import bootstrap

    run(bootstrap(settings, topologies), args.loglevel, settings.drain_timeout_s)
    return 0  # pragma: no cover - run exits the process


# --- org data ------------------------------------------------------------------------------


def cmd_orgdata_load(args: argparse.Namespace) -> int:
    from llmflow.services.orgdata.loader import read_records, sample_records
    from llmflow.services.orgdata.store import validate_table
    from llmflow.services.worker.orgdata import publish_tables

    if args.samples == bool(args.table or args.file):
        raise LlmflowError("give TABLE and FILE, or --samples")
    if args.samples:
        tables, key_field = sample_records(), "id"
    else:
        if not args.table or not args.file:
            raise LlmflowError("give TABLE and FILE, or --samples")
        # The whole file is read and checked before anything is published: a bad file is
        # one line `<file>:<line>: <reason>` (exit 2) and leaves the topic untouched.
        validate_table(args.table)
        records = read_records(Path(args.file), args.key_field, last_wins=args.last_wins)
        tables, key_field = {args.table: records}, args.key_field
    settings = _settings()
    _kafka(settings)
    for report in publish_tables(settings, tables, key_field, full_sync=args.full_sync):
        print(report)
    return 0


def cmd_orgdata_get(args: argparse.Namespace) -> int:
    from llmflow.services.orgdata.materializer import Materializer
    from llmflow.services.orgdata.store import OrgDataStore, validate_table
    from llmflow.topologies.collections import load_collections

    validate_table(args.table)
    settings = _settings()
    collections = load_collections(settings.collections_file)
    spec = {args.table: collections[args.table]} if args.table in collections else {}
    topic = settings.orgdata_topic(args.table)
    with OrgDataStore(":memory:", spec) as store:
        follower = Materializer(store, _kafka(settings), {args.table: topic})
        follower.start()
        try:
            if not follower.wait_ready(args.timeout):
                raise LlmflowError(f"{topic} could not be read within {args.timeout:.0f} s")
        finally:
            follower.stop()
        record = store.get(args.table, args.key)
        if record is None:
            print(f"{args.table}: no record {args.key!r} in {topic}", file=sys.stderr)
            return 1
        shown = {
            "table": record.table,
            "key": record.key,
            "version": record.version,
            "topic": topic,
            "partition": record.partition,
            "offset": record.offset,
            "data": record.data,
        }
        if spec:
            found = store.passages_of(args.table, args.key)
            shown["passages"] = [{"n": p.n, "text": p.text} for p in found]
        print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


# --- produce / consume ---------------------------------------------------------------------


def cmd_produce(args: argparse.Namespace) -> int:
    from llmflow.services.sdk import EventProducer, image_event, text_event, text_image_event

    # Build and check every event first: a bad one must not leave half a batch sent.
    batch: list[tuple[bytes, Any]]
    if args.file:
        batch = _read_event_file(Path(args.file), keep_invalid=args.raw)
    else:
        if not args.key:
            raise LlmflowError("--key is required without --file")
        common = {"key": args.key, "source": args.source, "tenant": args.tenant}
        events: list[Any]
        try:
            if args.image and args.text:
                events = [text_image_event(args.text, args.image, **common)]
            elif args.image:
                events = [image_event(image, **common) for image in args.image]
            elif args.text:
                events = [text_event(args.text, **common)]
            else:
                raise LlmflowError("give --text, --image or --file")
        except OSError as exc:
            raise LlmflowError(f"--image {exc.filename}: {exc.strerror}") from exc
        for event in events:
            for image in getattr(event, "images", None) or [getattr(event, "image", None)]:
                if image is not None and (image.url or "").startswith("file://"):
                    print(
                        f"llmflow produce: {image.url} is too large to send inline: workers "
                        "read it only inside their LLMFLOW_IMAGE_ROOT",
                        file=sys.stderr,
                    )
        batch = [(b"", event) for event in events]
    with EventProducer(_kafka(_settings())) as producer:
        for line, event in batch:
            if event is None:
                producer.send_raw(args.topic, line)
            else:
                producer.send(args.topic, event)
    print(f"produced {len(batch)} event(s) to {args.topic}")
    return 0


def _read_event_file(path: Path, keep_invalid: bool) -> list[tuple[bytes, Any]]:
    """(raw line, event or None when invalid and kept) for every non-blank line."""
    from pydantic import ValidationError

    from llmflow.schemas.events import parse_event

    batch: list[tuple[bytes, Any]] = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            batch.append((line, parse_event(line)))
        except ValidationError as exc:
            if not keep_invalid:
                raise LlmflowError(f"{path}:{number}: not a valid event: {exc}") from exc
            batch.append((line, None))
    return batch


def cmd_consume(args: argparse.Namespace) -> int:
    from llmflow.services.sdk import ResultConsumer

    settings = _settings()
    with ResultConsumer(
        _kafka(settings),
        args.topics,
        group_id=args.group,
        from_beginning=not args.latest,
    ) as consumer:
        for record in consumer.records(idle_timeout_s=args.idle_timeout, limit=args.max):
            print(record.value.decode(errors="replace"), flush=True)
    return 0


# --- replay and compare --------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    from llmflow.services.shadow.ranges import parse_offsets, parse_time
    from llmflow.services.shadow.replay import ReplayOptions, replay
    from llmflow.topologies.loader import load_topology

    candidate = load_topology(args.topology)
    if args.offsets is not None and (args.start or args.end):
        raise LlmflowError("give --from/--to or --offsets, not both")
    start = parse_time(args.start) if args.start else None
    end = parse_time(args.end) if args.end else None
    if start and end and start >= end:
        raise LlmflowError(f"--from {args.start} is not before --to {args.end}")
    options = ReplayOptions(
        start=start,
        end=end,
        offsets=parse_offsets(args.offsets) if args.offsets is not None else None,
        shadow_topic=args.shadow_topic,
        group=args.group,
        concurrency=args.concurrency,
        quota_share=args.quota_share,
        max_usd=args.max_usd,
        progress_s=args.progress,
    )
    data_dir = args.data_dir or f".llmflow/replay-{candidate.name}"
    settings = _settings(data_dir=data_dir)
    _kafka(settings)
    progress = replay(
        settings, candidate, options, lambda p: print(p.line(), file=sys.stderr, flush=True)
    )
    print(json.dumps(progress.summary()))
    if progress.stopped:
        print(f"llmflow replay: stopped early: {progress.stopped}", file=sys.stderr)
        return 3
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from llmflow.services.shadow.compare import JudgeOptions, compare_topics
    from llmflow.services.shadow.replay import shadow_topic
    from llmflow.services.shadow.report import chart, markdown
    from llmflow.topologies.loader import load_topology

    candidate = load_topology(args.topology)
    if bool(args.judge_model) != bool(args.rubric):
        raise LlmflowError("--judge-model and --rubric go together")
    judge = None
    settings = _settings()
    if args.judge_model and args.judge_endpoint not in settings.models_config().connections:
        raise LlmflowError(
            f"--judge-endpoint {args.judge_endpoint!r}: no such endpoint (LLMFLOW_ENDPOINTS)"
        )
    if args.judge_model:
        rubric = Path(args.rubric).read_text()
        judge = JudgeOptions(args.judge_model, rubric, args.judge_endpoint, args.judge_limit)
    live = args.live_topic or [
        candidate.output_topic,
        candidate.dead_letter_topic,
        candidate.parked,
    ]
    shadow = args.shadow_topic or shadow_topic(candidate)
    _kafka(settings)
    report = compare_topics(
        settings, candidate, shadow_topic=shadow, live_topics=live, judge_with=judge
    )
    out = Path(args.out or f".llmflow/compare-{candidate.name}-{candidate.version}")
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    chart(report, out / "report.png")
    print(text)
    print(f"written: {out / 'report.md'}, {out / 'report.json'}, {out / 'report.png'}")
    return 0 if report["events"]["compared"] else 4


# --- schemas -------------------------------------------------------------------------------


def cmd_schemas_export(args: argparse.Namespace) -> int:
    from llmflow.schemas.export import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return 0


# --- parser --------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmflow")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text}: a positive amount")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: a share above 0 and at most 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llmflow {_version()}")
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT,...",
        help="the Kafka cluster, for every command (default: KAFKA_BOOTSTRAP_SERVERS)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="local Apache Kafka (KRaft) for development and tests")
    kafka_sub = kafka.add_subparsers(dest="kafka_command", required=True)
    kafka_sub.add_parser("fetch", help="download Kafka from Maven Central").set_defaults(
        func=cmd_kafka_fetch
    )
    start = kafka_sub.add_parser("start", help="run a single-node broker until Ctrl-C")
    start.add_argument(
        "--data-dir",
        default=".llmflow/kafka",
        help="kept between starts: a later start reuses its records, cluster and port",
    )
    start.add_argument(
        "--port",
        type=int,
        default=0,
        help="0 picks a free port on a new folder and reuses the kept one after; "
        "a port other than the kept one is an error",
    )
    start.add_argument(
        "--secure",
        action="store_true",
        help="a new folder's broker takes SASL_SSL only (SCRAM users, a throw-away CA); "
        "prints the export lines a client needs",
    )
    start.set_defaults(func=cmd_kafka_start)

    topology = sub.add_parser("topology", help="work with topology files")
    topology_sub = topology.add_subparsers(dest="topology_command", required=True)
    validate = topology_sub.add_parser("validate", help="check topology files")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=cmd_topology_validate)

    worker = sub.add_parser("worker", help="run a stream processor for one or more topologies")
    worker.add_argument("--topology", action="append", required=True, help="YAML file; repeat")
    worker.add_argument("--concurrency", type=int, help="events in flight per topology")
    worker.add_argument("--app-id", help="consumer group shared by workers that split the work")
    worker.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info"])
    worker.set_defaults(func=cmd_worker)

    orgdata = sub.add_parser("orgdata", help="org data in compacted Kafka topics")
    orgdata_sub = orgdata.add_subparsers(dest="orgdata_command", required=True)
    load = orgdata_sub.add_parser(
        "load", help="publish a CSV or JSONL file to a table's topic (one transaction)"
    )
    load.add_argument("table", nargs="?")
    load.add_argument("file", nargs="?")
    load.add_argument("--key-field", default="id")
    load.add_argument(
        "--last-wins",
        action="store_true",
        help="let a key repeat in the file and keep its last record (default: an error)",
    )
    load.add_argument(
        "--full-sync", action="store_true", help="delete the table's records the file lacks"
    )
    load.add_argument("--samples", action="store_true", help="load the bundled sample data")
    load.set_defaults(func=cmd_orgdata_load)
    get = orgdata_sub.add_parser("get", help="show a record as a worker would see it")
    get.add_argument("table")
    get.add_argument("key")
    get.add_argument("--timeout", type=float, default=120.0, help="seconds to read the topic")
    get.set_defaults(func=cmd_orgdata_get)

    produce = sub.add_parser("produce", help="publish events")
    produce.add_argument("--topic", required=True)
    produce.add_argument("--file", help="JSONL file, one event per line")
    produce.add_argument("--raw", action="store_true", help="send invalid lines as they are")
    produce.add_argument("--text")
    produce.add_argument("--image", action="append", help="image file or URL; repeat")
    produce.add_argument("--key")
    produce.add_argument("--source", default="cli")
    produce.add_argument("--tenant")
    produce.set_defaults(func=cmd_produce)

    consume = sub.add_parser("consume", help="print outputs or dead letters as they arrive")
    consume.add_argument("topics", nargs="+")
    consume.add_argument(
        "--group", help="share the partitions with this group and commit; default: read all"
    )
    consume.add_argument("--latest", action="store_true", help="only new records")
    consume.add_argument("--max", type=int)
    consume.add_argument("--idle-timeout", type=float, default=float("inf"))
    consume.set_defaults(func=cmd_consume)

    replay = sub.add_parser(
        "replay",
        help="run a range of the live input through a candidate topology into a shadow topic",
    )
    replay.add_argument("--topology", required=True, help="the candidate's YAML file")
    replay.add_argument("--from", dest="start", help="first record time, ISO 8601 (UTC default)")
    replay.add_argument("--to", dest="end", help="records before this time, ISO 8601")
    replay.add_argument(
        "--offsets", help="PARTITION:FIRST-LAST,... or FIRST-LAST for every partition"
    )
    replay.add_argument("--shadow-topic", help="default: <output topic>.shadow.<version>")
    replay.add_argument("--group", help="default: llmflow-replay.<name>.<version>.<range>")
    replay.add_argument("--concurrency", type=_at_least_one, default=20, help="events in flight")
    replay.add_argument(
        "--quota-share", type=_share, default=0.25, help="share of each model's quota it takes"
    )
    replay.add_argument("--max-usd", type=_positive, help="stop once this run has spent this (USD)")
    replay.add_argument("--progress", type=float, default=2.0, help="seconds between reports")
    replay.add_argument("--data-dir", help="its copy of the org data (.llmflow/replay-<name>)")
    replay.set_defaults(func=cmd_replay)

    compare = sub.add_parser(
        "compare", help="report how a candidate's shadow outputs differ from the live ones"
    )
    compare.add_argument("--topology", required=True, help="the candidate's YAML file")
    compare.add_argument("--shadow-topic", help="default: <output topic>.shadow.<version>")
    compare.add_argument(
        "--live-topic", action="append", help="default: the output, dead-letter, parked topics"
    )
    compare.add_argument("--out", help="folder for report.md/.json/.png")
    compare.add_argument("--judge-model", help="score differing answers with this model")
    compare.add_argument("--rubric", help="file: the judge's rubric (its system prompt)")
    compare.add_argument("--judge-endpoint", default="default", help="named endpoint")
    compare.add_argument(
        "--judge-limit", type=_at_least_one, default=50, help="pairs judged at most"
    )
    compare.set_defaults(func=cmd_compare)

    schemas = sub.add_parser("schemas", help="contracts")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_sub.add_parser("export", help="write JSON Schema files")
    # Relative to where it runs, never into an installed package: `make schemas` runs it
    # from the checkout's root.
    export.add_argument("--out", default="schemas/json", help="folder (default: schemas/json)")
    export.set_defaults(func=cmd_schemas_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kafka-python logs every failed connection attempt; a broker out of reach is reported
    # once, below, with the setting to fix.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    from aiokafka.errors import KafkaConnectionError
    from kafka.errors import KafkaTimeoutError

    args = build_parser().parse_args(argv)
    if args.bootstrap_servers:
        # Every command reads its settings from the environment (`Settings`).
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap_servers
    try:
        return int(args.func(args))
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092 (the default)")
        print(
            f"llmflow: error: cannot reach Kafka at {servers} (KAFKA_BOOTSTRAP_SERVERS): {exc}",
            file=sys.stderr,
        )
        return 2
    except LlmflowError as exc:
        print(f"llmflow: error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"llmflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
