"""The `llmflow` command: one entry point for every process and tool of the pipeline (the
model simulator, a stand-in for a model endpoint, is `llmflow-modelsim`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

from llmflow.errors import LlmflowError
from llmflow.logs import LEVELS, setup_logging

# The broker address every command uses unless told otherwise (KAFKA_BOOTSTRAP_SERVERS),
# and so the port `kafka start` listens on.
KAFKA_PORT = 9092


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
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from llmflow.services.worker.settings import Settings

    # Settings are frozen: command-line values are folded in at construction.
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        # One line per wrong setting, named as it is set: by its environment variable
        # (a field's name is its LLMFLOW_ variable; an alias is the variable itself).
        problems = [
            f"{_variable(str(error['loc'][0]))}: {error['msg']}" if error["loc"] else error["msg"]
            for error in exc.errors()
        ]
        raise LlmflowError("; ".join(problems)) from exc
    except SettingsError as exc:  # a JSON setting that is no JSON (its value may be a secret)
        raise LlmflowError(f"{_variable(_field_of(exc))}: not valid JSON") from None


def _variable(name: str) -> str:
    return name if name.isupper() else f"LLMFLOW_{name.upper()}"


def _field_of(exc: Exception) -> str:
    """The field pydantic-settings names in `error parsing value for field "x" from ...`."""
    message = str(exc)
    return message.split('"')[1] if message.count('"') >= 2 else "a setting"


# --- kafka -------------------------------------------------------------------------------


def cmd_kafka_fetch(args: argparse.Namespace) -> int:
    from llmflow.services.broker.local import fetch_kafka

    print(f"Kafka jars in {fetch_kafka()}")
    return 0


def cmd_kafka_start(args: argparse.Namespace) -> int:
    from llmflow.services.broker.local import LocalKafka, kept_port, port_is_free

    data_dir = Path(args.data_dir)
    kept = kept_port(data_dir)
    # A folder started before keeps its cluster, records and port (see LocalKafka.start):
    # with no --port it comes back where it was; a new folder takes the port every other
    # command expects unless told otherwise (0: any free port).
    port = args.port if args.port is not None else (kept or KAFKA_PORT)
    if kept is None and port and not port_is_free(port):
        raise LlmflowError(
            f"port {port} is in use (another Kafka broker?): stop it, or start with --port 0 "
            "for a free port"
        )
    broker = LocalKafka(data_dir, port=port, secure=True if args.secure else None).start()
    try:
        for name, value in broker.environment().items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
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

    failed = missing = 0
    for path in args.files:
        if not Path(path).is_file():
            missing += 1
            print(f"llmflow: error: {_not_a_file(Path(path))}", file=sys.stderr)
            continue
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
    return 2 if missing else 1 if failed else 0


# --- worker --------------------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from llmflow.services.worker.preflight import preflight
    from llmflow.services.worker.supervisor import SUPERVISOR_PID_ENV, follow_supervisor
    from llmflow.topologies.loader import load_topology

    if supervisor := os.environ.get(SUPERVISOR_PID_ENV):  # one of `--processes N`
        follow_supervisor(int(supervisor))
    settings = _settings(**{field: getattr(args, field) for field in WORKER_FLAGS})
    topologies = [load_topology(path) for path in args.topology]
    if settings.preflight:
        # A wrong broker, endpoint or key stops the worker now, one line per problem.
        problems = preflight(settings, topologies)
        for problem in problems:
            print(f"llmflow worker: {problem}", file=sys.stderr)
        if problems:
            return 2
    if settings.processes > 1:
        from llmflow.services.worker.supervisor import supervise

        return supervise(settings, args.topology, args.loglevel)

    from llmflow.services.worker.app import run
    from llmflow.services.worker.bootstrap import bootstrap

    run(bootstrap(settings, topologies), settings.drain_timeout_s)
    return 0  # pragma: no cover - run exits the process


# --- gateway -------------------------------------------------------------------------------

# Gateway flags that override a setting (`GatewaySettings` field).
GATEWAY_FLAGS = ("host", "port", "insecure_no_auth")


def cmd_gateway(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from llmflow.services.gateway.app import Gateway, serve
    from llmflow.services.gateway.auth import Authenticator
    from llmflow.services.gateway.settings import GatewaySettings
    from llmflow.topologies.loader import load_topology

    overrides = {field: getattr(args, field) for field in GATEWAY_FLAGS}
    try:
        settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        # The message alone: an input value may be a token.
        problems = [
            f"{_variable('gateway_' + str(e['loc'][0]))}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors(include_input=False)
        ]
        raise LlmflowError("; ".join(problems)) from None
    except SettingsError as exc:  # a JSON setting that is no JSON; its value is not shown
        raise LlmflowError(f"{_variable('gateway_' + _field_of(exc))}: not valid JSON") from None
    credentials = settings.credentials()
    if not credentials and not settings.insecure_no_auth:
        raise LlmflowError(
            "no token configured: set LLMFLOW_GATEWAY_TOKENS (or LLMFLOW_GATEWAY_TOKENS_FILE), "
            "or run open with --insecure-no-auth"
        )
    if settings.insecure_no_auth:
        print(
            "llmflow gateway: running without authentication (--insecure-no-auth): anyone who "
            "reaches it publishes as any tenant and reads every result",
            file=sys.stderr,
        )
    topologies = [load_topology(path) for path in args.topology]
    inputs = [t.input_topic for t in topologies]
    if len(set(inputs)) != len(inputs):
        raise LlmflowError("two topologies read the same input topic")
    _kafka(settings)
    gateway = Gateway(
        settings,
        topologies,
        Authenticator(credentials, open_access=settings.insecure_no_auth),
        version=_version(),
    )
    asyncio.run(serve(gateway, lambda line: print(line, file=sys.stderr, flush=True)))
    return 0


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

    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise LlmflowError(f"--file {path}: {exc.strerror}") from exc
    batch: list[tuple[bytes, Any]] = []
    for number, line in enumerate(lines, start=1):
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
    # Without --group: no group is joined and nothing is committed, so a look at a topic
    # leaves no trace on the cluster. With one: the group's committed offsets say where
    # to start, and what was printed is committed, so the next run continues after it.
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
        try:
            rubric = Path(args.rubric).read_text()
        except OSError as exc:
            raise LlmflowError(f"--rubric {args.rubric}: {exc.strerror}") from exc
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


def _positive_or_inf(text: str) -> float:
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"{text}: a positive number of seconds, or inf")
    return value


def _not_a_file(path: Path) -> str:
    return f"{path}: {'is a directory' if path.is_dir() else 'no such file'}"


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: a share above 0 and at most 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmflow",
        description=__doc__,
        epilog="Settings come from environment variables: KAFKA_BOOTSTRAP_SERVERS, "
        "OPENAI_BASE_URL, OPENAI_API_KEY and LLMFLOW_<SETTING> (see `llmflow worker --help`).",
    )
    parser.add_argument("--version", action="version", version=f"llmflow {_version()}")
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT,...",
        help="the Kafka cluster, for every command (default: KAFKA_BOOTSTRAP_SERVERS, "
        f"else 127.0.0.1:{KAFKA_PORT})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_kafka(sub)
    _add_topology(sub)
    _add_worker(sub)
    _add_gateway(sub)
    _add_orgdata(sub)
    _add_produce(sub)
    _add_consume(sub)
    _add_replay(sub)
    _add_compare(sub)
    _add_schemas(sub)
    return parser


# What `add_subparsers()` returns; argparse names the class privately only.
_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_kafka(sub: _Commands) -> None:
    kafka = sub.add_parser("kafka", help="a local Apache Kafka broker (KRaft) for development")
    kafka_sub = kafka.add_subparsers(dest="kafka_command", required=True, metavar="COMMAND")
    fetch = kafka_sub.add_parser(
        "fetch", help="download Kafka's jars from Maven Central (needs mvn; LLMFLOW_KAFKA_LIB)"
    )
    fetch.set_defaults(func=cmd_kafka_fetch)
    start = kafka_sub.add_parser(
        "start",
        help="run a single-node broker until Ctrl-C; prints the line to export",
        description="Run a single-node broker until Ctrl-C. It prints `export "
        "KAFKA_BOOTSTRAP_SERVERS=HOST:PORT`: run that line in the shells where the other "
        "commands run, or give them --bootstrap-servers HOST:PORT.",
    )
    start.add_argument(
        "--data-dir",
        default=".llmflow/kafka",
        help="folder of the broker's records, kept between starts: a later start reuses its "
        "records, cluster and port (default: .llmflow/kafka)",
    )
    start.add_argument(
        "--port",
        type=int,
        help=f"port to listen on (default: {KAFKA_PORT} for a new folder, the kept port for "
        "one started before; 0: a free port); a port other than the kept one is an error",
    )
    start.add_argument(
        "--secure",
        action="store_true",
        help="a new folder gets a SASL_SSL listener only: SCRAM-SHA-512 users admin and "
        "llmflow, a certificate from a throw-away CA; the export lines then include "
        "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CA_LOCATION (a folder keeps "
        "the mode it was first started in)",
    )
    start.set_defaults(func=cmd_kafka_start)


def _add_topology(sub: _Commands) -> None:
    topology = sub.add_parser("topology", help="work with topology files")
    topology_sub = topology.add_subparsers(
        dest="topology_command", required=True, metavar="COMMAND"
    )
    validate = topology_sub.add_parser(
        "validate", help="check topology files: one line per file, or its problems"
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="topology YAML file")
    validate.set_defaults(func=cmd_topology_validate)


# Worker flags that override a setting (`Settings` field): a given flag wins over its
# environment variable.
WORKER_FLAGS = ("app_id", "concurrency", "processes")


def _add_worker(sub: _Commands) -> None:
    worker = sub.add_parser(
        "worker",
        help="run a stream processor for one or more topologies",
        epilog="Every worker setting is an environment variable LLMFLOW_<SETTING> (e.g. "
        "LLMFLOW_METRICS_PORT, LLMFLOW_IMAGE_ROOT, LLMFLOW_QUOTAS; all of them in the "
        "README's settings table); Kafka and the model endpoint also read "
        "KAFKA_BOOTSTRAP_SERVERS, OPENAI_BASE_URL and OPENAI_API_KEY.",
    )
    worker.add_argument(
        "--topology",
        action="append",
        required=True,
        metavar="FILE",
        help="topology YAML file to run; repeat for several",
    )
    worker.add_argument(
        "--concurrency",
        type=_at_least_one,
        metavar="N",
        help="events in flight per topology per process (default: LLMFLOW_CONCURRENCY, else 100)",
    )
    worker.add_argument(
        "--processes",
        type=_at_least_one,
        metavar="N",
        help="worker processes, one event loop each, in the same consumer group; above 1 "
        "a supervisor starts, restarts and stops them and serves their merged metrics "
        "(default: LLMFLOW_PROCESSES, else the CPUs this process may use)",
    )
    worker.add_argument(
        "--app-id",
        metavar="ID",
        help="consumer group of the workers that split the work (default: LLMFLOW_APP_ID, "
        "else llmflow)",
    )
    worker.add_argument(
        "--loglevel",
        default="warn",
        choices=list(LEVELS),
        help="least severe log records shown (default: warn)",
    )
    worker.set_defaults(func=cmd_worker)


def _add_gateway(sub: _Commands) -> None:
    gateway = sub.add_parser(
        "gateway",
        help="HTTP gateway: publish events, wait for or stream results, without a Kafka client",
        epilog="Every gateway setting is an environment variable LLMFLOW_GATEWAY_<SETTING> "
        "(e.g. LLMFLOW_GATEWAY_TOKENS, LLMFLOW_GATEWAY_MAX_BODY_BYTES; all of them in the "
        "README's gateway section); Kafka reads KAFKA_BOOTSTRAP_SERVERS.",
    )
    gateway.add_argument(
        "--topology",
        action="append",
        required=True,
        metavar="FILE",
        help="topology YAML file whose input topic takes events and whose results are "
        "served; repeat for several",
    )
    gateway.add_argument(
        "--host", help="address to bind (default: LLMFLOW_GATEWAY_HOST, else 127.0.0.1)"
    )
    gateway.add_argument(
        "--port", type=int, help="port to listen on (default: LLMFLOW_GATEWAY_PORT, else 8088)"
    )
    gateway.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="run without bearer tokens: anyone publishes as any tenant and reads every "
        "result (default: LLMFLOW_GATEWAY_INSECURE_NO_AUTH, else false: with no token "
        "configured the gateway refuses to start)",
    )
    gateway.add_argument(
        "--loglevel",
        default="warn",
        choices=list(LEVELS),
        help="least severe log records shown (default: warn)",
    )
    gateway.set_defaults(func=cmd_gateway)


def _add_orgdata(sub: _Commands) -> None:
    orgdata = sub.add_parser("orgdata", help="org data in compacted Kafka topics")
    orgdata_sub = orgdata.add_subparsers(dest="orgdata_command", required=True, metavar="COMMAND")
    load = orgdata_sub.add_parser(
        "load", help="publish a CSV or JSONL file to a table's topic (one transaction)"
    )
    load.add_argument(
        "table",
        nargs="?",
        help="table name; its topic is LLMFLOW_ORGDATA_TOPIC_PREFIX + TABLE "
        "(default prefix llmflow.orgdata.)",
    )
    load.add_argument("file", nargs="?", help="the table's records: a .csv or .jsonl file")
    load.add_argument("--key-field", default="id", help="field that keys each record (default: id)")
    load.add_argument(
        "--last-wins",
        action="store_true",
        help="let a key repeat in the file and keep its last record (default: an error)",
    )
    load.add_argument(
        "--full-sync", action="store_true", help="delete the table's records the file lacks"
    )
    load.add_argument(
        "--samples", action="store_true", help="load the bundled sample data instead of a file"
    )
    load.set_defaults(func=cmd_orgdata_load)
    get = orgdata_sub.add_parser("get", help="show a record as a worker would see it")
    get.add_argument("table", help="table name")
    get.add_argument("key", help="the record's key")
    get.add_argument(
        "--timeout",
        type=_positive,
        default=120.0,
        help="seconds to read the table's topic (default: 120)",
    )
    get.set_defaults(func=cmd_orgdata_get)


def _add_produce(sub: _Commands) -> None:
    produce = sub.add_parser(
        "produce", help="publish events: one from --text/--image, or a file of them"
    )
    produce.add_argument("--topic", required=True, help="topic to publish to (an input topic)")
    produce.add_argument("--file", help="JSONL file, one event per line, all checked first")
    produce.add_argument(
        "--raw",
        action="store_true",
        help="with --file: send invalid lines as they are (to see them dead-lettered)",
    )
    produce.add_argument("--text", help="the event's text")
    produce.add_argument(
        "--image",
        action="append",
        metavar="FILE_OR_URL",
        help="image file or http(s) URL; repeat for several. A file too large to send "
        "inline goes as a file:// URL, which workers read only inside LLMFLOW_IMAGE_ROOT",
    )
    produce.add_argument(
        "--key",
        help="the event's key: Kafka record key and org-data lookup key (required without --file)",
    )
    produce.add_argument(
        "--source", default="cli", help="the system the event comes from (default: cli)"
    )
    produce.add_argument("--tenant", help="who the event is accounted to (LLMFLOW_BUDGETS)")
    produce.set_defaults(func=cmd_produce)


# How long `consume` waits for a record before it stops, by default.
CONSUME_IDLE_S = 10.0


def _add_consume(sub: _Commands) -> None:
    consume = sub.add_parser(
        "consume",
        help="print the records of topics (outputs, dead letters), one JSON per line",
        description="Print the records of the topics, one per line, until none came for "
        "--idle-timeout seconds. Without --group it joins no consumer group and commits "
        "nothing; with one it continues where the group's last run stopped.",
    )
    consume.add_argument("topics", nargs="+", metavar="TOPIC", help="topic to read")
    consume.add_argument(
        "--group",
        metavar="NAME",
        help="read as this consumer group: start at its committed offsets and commit what "
        "is printed, so the next run continues after it (default: no group, no commits)",
    )
    consume.add_argument(
        "--latest",
        action="store_true",
        help="only records that arrive from now on (with --group: where the group has no "
        "offset yet)",
    )
    consume.add_argument("--max", type=_at_least_one, metavar="N", help="stop after N records")
    consume.add_argument(
        "--idle-timeout",
        type=_positive_or_inf,
        default=CONSUME_IDLE_S,
        metavar="SECONDS",
        help=f"stop after this long without a record (default: {CONSUME_IDLE_S:g}; "
        "inf: wait until Ctrl-C)",
    )
    consume.set_defaults(func=cmd_consume)


def _add_replay(sub: _Commands) -> None:
    replay = sub.add_parser(
        "replay",
        help="run a range of the live input through a candidate topology into a shadow topic",
    )
    replay.add_argument("--topology", required=True, help="the candidate's YAML file")
    replay.add_argument(
        "--from", dest="start", help="first record time, ISO 8601 (UTC unless a zone is given)"
    )
    replay.add_argument("--to", dest="end", help="records before this time, ISO 8601")
    replay.add_argument(
        "--offsets", help="PARTITION:FIRST-LAST,... or FIRST-LAST for every partition"
    )
    replay.add_argument(
        "--shadow-topic", help="topic of its results (default: <output topic>.shadow.<version>)"
    )
    replay.add_argument(
        "--group", help="its consumer group (default: llmflow-replay.<name>.<version>.<range>)"
    )
    replay.add_argument(
        "--concurrency",
        type=_at_least_one,
        default=20,
        help="events in flight (default: 20; not LLMFLOW_CONCURRENCY)",
    )
    replay.add_argument(
        "--quota-share",
        type=_share,
        default=0.25,
        help="share of each model's quota (LLMFLOW_QUOTAS) it may take (default: 0.25)",
    )
    replay.add_argument("--max-usd", type=_positive, help="stop once this run has spent this (USD)")
    replay.add_argument(
        "--progress", type=_positive, default=2.0, help="seconds between reports (default: 2)"
    )
    replay.add_argument(
        "--data-dir",
        help="folder of its copy of the org data (default: .llmflow/replay-<name>; not "
        "LLMFLOW_DATA_DIR)",
    )
    replay.set_defaults(func=cmd_replay)


def _add_compare(sub: _Commands) -> None:
    compare = sub.add_parser(
        "compare", help="report how a candidate's shadow outputs differ from the live ones"
    )
    compare.add_argument("--topology", required=True, help="the candidate's YAML file")
    compare.add_argument(
        "--shadow-topic", help="its results (default: <output topic>.shadow.<version>)"
    )
    compare.add_argument(
        "--live-topic",
        action="append",
        help="live results to compare with; repeat (default: the output, dead-letter and "
        "parked topics)",
    )
    compare.add_argument(
        "--out", help="folder for report.md/.json/.png (default: .llmflow/compare-<name>-<version>)"
    )
    compare.add_argument("--judge-model", help="score differing answers with this model")
    compare.add_argument("--rubric", help="file: the judge's rubric (its system prompt)")
    compare.add_argument(
        "--judge-endpoint",
        default="default",
        help="endpoint of the judge: default (OPENAI_BASE_URL) or a name in LLMFLOW_ENDPOINTS",
    )
    compare.add_argument(
        "--judge-limit",
        type=_at_least_one,
        default=50,
        help="pairs judged at most (default: 50)",
    )
    compare.set_defaults(func=cmd_compare)


def _add_schemas(sub: _Commands) -> None:
    schemas = sub.add_parser("schemas", help="the event and result contracts")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True, metavar="COMMAND")
    export = schemas_sub.add_parser(
        "export", help="write JSON Schema files for producers and consumers in other languages"
    )
    # Relative to where it runs, never into an installed package: `make schemas` runs it
    # from the checkout's root.
    export.add_argument("--out", default="schemas/json", help="folder (default: schemas/json)")
    export.set_defaults(func=cmd_schemas_export)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(LEVELS[getattr(args, "loglevel", "warn")])
    from aiokafka.errors import KafkaConnectionError
    from kafka.errors import KafkaTimeoutError

    if args.bootstrap_servers:
        # Every command reads its settings from the environment (`Settings`).
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = args.bootstrap_servers
    try:
        return int(args.func(args))
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{KAFKA_PORT} (the default)")
        return _error(f"cannot reach Kafka at {servers} (KAFKA_BOOTSTRAP_SERVERS): {exc}")
    except (LlmflowError, json.JSONDecodeError) as exc:
        return _error(str(exc))
    except OSError as exc:
        if exc.filename is None:
            raise
        # A file named on the command line or in a setting that is not there: one line.
        return _error(f"{exc.filename}: {exc.strerror}")


def _error(message: str) -> int:
    print(f"llmflow: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
