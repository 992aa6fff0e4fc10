"""The `llmflow` command: one entry point for every process and tool of the system."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmflow.errors import LlmflowError


def _settings(**overrides: Any) -> Any:
    from llmflow.services.settings import Settings

    # Settings are frozen: command-line values are folded in at construction.
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


# --- kafka -------------------------------------------------------------------------------


def cmd_kafka_fetch(args: argparse.Namespace) -> int:
    from llmflow.services.broker.local import LIB_DIR, fetch_kafka

    fetch_kafka()
    print(f"Kafka jars in {LIB_DIR}")
    return 0


def cmd_kafka_start(args: argparse.Namespace) -> int:
    from llmflow.services.broker.local import LocalKafka

    broker = LocalKafka(Path(args.data_dir), port=args.port).start()
    print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}", flush=True)
    _wait_for_signal()
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


# --- model simulator -----------------------------------------------------------------------


# Simulator settings exposed as flags, with the type argparse converts them to.
_SIMULATOR_FLAGS: dict[str, type] = {
    "latency_ms": float,
    "jitter_ms": float,
    "rate_429": float,
    "retry_after_s": float,
    "rate_500": float,
    "rate_slow": float,
    "rate_invalid": float,
    "slow_ms": float,
    "seed": int,
    "rpm_limit": int,
    "require_api_key": str,
}


def cmd_modelsim(args: argparse.Namespace) -> int:
    from llmflow.services.modelsim.config import SimulatorConfig
    from llmflow.services.modelsim.server import run

    logging.getLogger("llmflow.services.modelsim").setLevel(logging.INFO)  # the "listening on" line
    given = {name: getattr(args, name) for name in _SIMULATOR_FLAGS}
    config = SimulatorConfig(**{k: v for k, v in given.items() if v is not None})
    run(config, args.host, args.port)
    return 0


def _add_simulator_flags(parser: argparse.ArgumentParser) -> None:
    from llmflow.services.modelsim.config import SimulatorConfig

    for name, kind in _SIMULATOR_FLAGS.items():
        field = SimulatorConfig.model_fields[name]
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=kind,
            help=f"{field.description or ''} (default {field.default})",
        )


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
        calls = ", ".join(f"{c.name}({c.kind}:{c.model})" for c in topology.calls)
        print(
            f"{path}: ok - {topology.name} v{topology.version}: "
            f"{topology.input_topic} -> [{calls}] -> {topology.output_topic}"
        )
    return 1 if failed else 0


# --- worker --------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from llmflow.services.broker.topics import ensure_topics
    from llmflow.services.worker.app import build_app
    from llmflow.services.worker.metrics import Metrics
    from llmflow.topologies.loader import load_topology

    settings = _settings(app_id=args.app_id, concurrency=args.concurrency)
    topologies = [load_topology(path) for path in args.topology]
    topics = [
        t for tp in topologies for t in (tp.input_topic, tp.output_topic, tp.dead_letter_topic)
    ]
    partitions = ensure_topics(
        settings.kafka_bootstrap_servers,
        topics,
        settings.topic_partitions,
        settings.topic_replication_factor,
    )
    metrics = Metrics()
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    app = build_app(settings, topologies, partitions, metrics)
    names = ", ".join(f"{t.name} v{t.version}" for t in topologies)
    logging.getLogger("llmflow").warning(
        "worker %s: %s on %s, model endpoint %s, %d events in flight per topology",
        settings.worker_id,
        names,
        settings.kafka_bootstrap_servers,
        settings.openai_base_url,
        settings.concurrency,
    )
    worker = _quiet_worker_class()(app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits the process


def _quiet_worker_class() -> type:
    import faust

    class QuietWorker(faust.Worker):
        """faust's terminal spinner turns the root logger to DEBUG so that it can spin on
        every record; in a service that builds and drops every debug record of aiokafka,
        openai and faust, about a tenth of the worker's CPU. No spinner, no DEBUG."""

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            pass

    return QuietWorker


# --- org data ------------------------------------------------------------------------------


def cmd_orgdata_load(args: argparse.Namespace) -> int:
    from llmflow.services.orgdata.loader import load_file, load_samples
    from llmflow.services.orgdata.store import OrgDataStore

    settings = _settings()
    path = Path(args.db) if args.db else settings.orgdata_file
    path.parent.mkdir(parents=True, exist_ok=True)
    store = OrgDataStore(path)
    try:
        if args.samples:
            counts = load_samples(store)
        else:
            if not args.table or not args.file:
                raise LlmflowError("give TABLE and FILE, or --samples")
            counts = {args.table: load_file(store, args.table, Path(args.file), args.key_field)}
        for table, count in counts.items():
            print(f"{table}: {count} records loaded into {path}")
    finally:
        store.close()
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
        if args.image and args.text:
            events = [text_image_event(args.text, args.image, **common)]
        elif args.image:
            events = [image_event(image, **common) for image in args.image]
        elif args.text:
            events = [text_event(args.text, **common)]
        else:
            raise LlmflowError("give --text, --image or --file")
        batch = [(b"", event) for event in events]
    with EventProducer(_settings().kafka_bootstrap_servers) as producer:
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
        settings.kafka_bootstrap_servers,
        args.topics,
        group_id=args.group,
        from_beginning=not args.latest,
    ) as consumer:
        for record in consumer.records(idle_timeout_s=args.idle_timeout, limit=args.max):
            print(record.value.decode(errors="replace"), flush=True)
    return 0


# --- schemas & demo ------------------------------------------------------------------------


def cmd_schemas_export(args: argparse.Namespace) -> int:
    from llmflow.schemas.export import write_schemas

    for path in write_schemas(Path(args.out)) if args.out else write_schemas():
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from llmflow.services.demo import run_demo

    return run_demo(events=args.events, bad=args.bad)


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    kafka = sub.add_parser("kafka", help="local Apache Kafka (KRaft) for development and tests")
    kafka_sub = kafka.add_subparsers(dest="kafka_command", required=True)
    kafka_sub.add_parser("fetch", help="download Kafka from Maven Central").set_defaults(
        func=cmd_kafka_fetch
    )
    start = kafka_sub.add_parser("start", help="run a single-node broker until Ctrl-C")
    start.add_argument("--data-dir", default=".llmflow/kafka")
    start.add_argument("--port", type=int, default=0, help="0 picks a free port")
    start.set_defaults(func=cmd_kafka_start)

    sim = sub.add_parser("modelsim", help="run the OpenAI-compatible model SIMULATOR")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8400)
    _add_simulator_flags(sim)
    sim.set_defaults(func=cmd_modelsim)

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

    orgdata = sub.add_parser("orgdata", help="organisational data (embedded SQLite)")
    orgdata_sub = orgdata.add_subparsers(dest="orgdata_command", required=True)
    load = orgdata_sub.add_parser("load", help="load a CSV or JSONL file into a table")
    load.add_argument("table", nargs="?")
    load.add_argument("file", nargs="?")
    load.add_argument("--key-field", default="id")
    load.add_argument("--samples", action="store_true", help="load the bundled sample data")
    load.add_argument("--db", help="SQLite file (default: LLMFLOW_ORGDATA_PATH)")
    load.set_defaults(func=cmd_orgdata_load)

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
    consume.add_argument("--group")
    consume.add_argument("--latest", action="store_true", help="only new records")
    consume.add_argument("--max", type=int)
    consume.add_argument("--idle-timeout", type=float, default=float("inf"))
    consume.set_defaults(func=cmd_consume)

    schemas = sub.add_parser("schemas", help="contracts")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_sub.add_parser("export", help="write JSON Schema files")
    export.add_argument("--out")
    export.set_defaults(func=cmd_schemas_export)

    demo = sub.add_parser("demo", help="run the end-to-end demo")
    demo.add_argument("--events", type=int, default=24)
    demo.add_argument("--bad", type=int, default=4)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LlmflowError as exc:
        print(f"llmflow: error: {exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"llmflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
