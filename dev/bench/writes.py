"""What the worker writes to Kafka per event: records, and produce requests the broker served.

    python -m dev.bench.writes [--events 3000] [--against 020a997] [--rounds 3] [--run-dir DIR]

Starts a local broker that logs every request it serves (`kafka.request.logger` at DEBUG,
to its own file) and the model SIMULATOR answering at once, then, for each case (C=200
calls in flight: 1 call per event with 200 events in flight, and 3 calls per event with 67),
produces a backlog of events, runs one `llmflow worker` over it until every event has its
result, and stops it (SIGTERM: a clean stop, so what it flushes at the end counts too).

- Records per event: the end offsets of every topic the worker wrote (output, dead letters,
  parked, the tables' changelogs), after the run less before it, over the events.
- Produce requests per event: the PRODUCE requests the broker logged for the worker's
  client between its start and its exit, over the events.

With `--against REV`, each case runs first with the worker's code at git revision REV (the
files of that commit, exported into the run folder and put first on the worker's path),
then with this checkout's: the same command gives the before and the after. Counts only,
no timings: what a run writes does not depend on how fast the machine is, except through
how many writes concurrent events share, and produce requests most: the producer has one
request in flight per broker and the next carries whatever was sent meanwhile, so their
count follows the broker's round trips as much as the records. `--rounds` runs each code
and case again (alternating which code goes first) and reports medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from dev import PROJECT_ROOT, launch
from dev.bench.harness import (
    BenchError,
    OffsetProbe,
    TopologyCopy,
    create_topics,
    encode_events,
    produce,
    publish_org_samples,
    simulator,
    topology_copy,
)
from dev.launch import Child
from llmflow.services.broker.local import LocalKafka
from llmflow.services.broker.topics import partition_counts

PARTITIONS = 4
CALLS_IN_FLIGHT = 200
WORKER_CLIENT = "faust-"
"""Client id prefix of the worker's producer (faust's default `broker_client_id`)."""

# Broker logging: warnings to the console (the data folder's broker.log), the line the
# launcher's readiness relies on, and every request served to a file of its own.
LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
appender.requests.type = File
appender.requests.name = REQUESTS
appender.requests.fileName = {path}
appender.requests.layout.type = PatternLayout
appender.requests.layout.pattern = %m%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.requests.name = kafka.request.logger
logger.requests.level = DEBUG
logger.requests.additivity = false
logger.requests.appenderRef.requests.ref = REQUESTS
"""

_PRODUCE = re.compile(r'"requestApiKey":0,.*?"clientId":"(?P<client>[^"]*)"')


@dataclass(frozen=True)
class Case:
    title: str
    calls: tuple[str, ...]

    @property
    def events_in_flight(self) -> int:
        return max(1, round(CALLS_IN_FLIGHT / len(self.calls)))


CASES = (
    Case("1 call/event", ("summarize",)),
    Case("3 calls/event", ("classify", "summarize", "draft_reply")),
)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def export_revision(revision: str, folder: Path) -> Path:
    """The files of `revision` (the package, its links included) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder.with_suffix(".tar")
    paths = ["llmflow", "services", "schemas", "topologies"]
    git = ["git", "-C", str(PROJECT_ROOT), "archive", "--format=tar", f"--output={archive}"]
    subprocess.run([*git, revision, *paths], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="tar")
    archive.unlink()
    return folder


async def end_offsets(bootstrap: str) -> dict[str, int]:
    """Records ever written to each topic (the sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        counts = await asyncio.to_thread(partition_counts, bootstrap, await consumer.topics())
        tps = [TopicPartition(topic, p) for topic, count in counts.items() for p in range(count)]
        ends = await consumer.end_offsets(tps) if tps else {}
        totals: Counter[str] = Counter()
        for tp, end in ends.items():
            totals[tp.topic] += end
        return dict(totals)
    finally:
        await consumer.stop()


def produce_requests(log: Path, start: int) -> Counter[str]:
    """PRODUCE requests logged from byte `start` of the request log, by client id."""
    clients: Counter[str] = Counter()
    with log.open("rb") as lines:
        lines.seek(start)
        for line in lines:
            if b'"requestApiKey":0,' in line and (match := _PRODUCE.search(line.decode())):
                clients[match["client"]] += 1
    return clients


def start_worker(
    name: str, topology: TopologyCopy, env: dict[str, str], code: Path, log_dir: Path
) -> Child:
    """`llmflow worker` run from `code`: first on the path, and the working folder (which
    `python -m` puts before everything else)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    args = [sys.executable, "-m", launch.CLI, "worker", "--topology", str(topology.path)]
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [*args, "--loglevel", "warn"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONPATH": str(code)},
            cwd=code,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def kind_of(topic: str, topology: TopologyCopy, app_id: str) -> str:
    if topic == topology.output_topic:
        return "output"
    if topic in (topology.dead_letter_topic, topology.parked_topic):
        return "dead letters/parked"
    for table in ("answered", "paid", "spend"):
        if topic == f"{app_id}-{topology.name}-{table}-changelog":
            return table
    return "other"


async def run_case(
    bootstrap: str,
    run_dir: Path,
    sim: Child,
    requests_log: Path,
    case: Case,
    events: int,
    code: Path,
    label: str,
    round_: int = 0,
) -> dict[str, Any]:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
    tag = f"{slug}-{len(case.calls)}call-r{round_ + 1}"
    topology = topology_copy(run_dir, tag, keep=case.calls)
    create_topics(bootstrap, topology, PARTITIONS)
    await produce(bootstrap, topology.input_topic, encode_events(tag, events), PARTITIONS)
    app_id = f"bench-writes-{tag}-{uuid.uuid4().hex[:6]}"
    env = launch.worker_env(
        bootstrap,
        sim.extra["base_url"],
        app_id,
        data_dir=run_dir / "state" / tag,
        concurrency=case.events_in_flight,
        topic_partitions=PARTITIONS,
    )
    before = await end_offsets(bootstrap)
    mark = await asyncio.to_thread(os.path.getsize, requests_log)
    progress(
        f"round {round_ + 1}, {label}, {case.title}: {events} events, "
        f"{case.events_in_flight} in flight"
    )
    worker = start_worker(tag, topology, env, code, run_dir / "logs")
    try:
        results = [topology.output_topic, topology.dead_letter_topic, topology.parked_topic]
        async with OffsetProbe(bootstrap) as probe:
            deadline = time.monotonic() + 600
            while (done := await probe.count(results, PARTITIONS)) < events:
                if not worker.alive():
                    raise BenchError(f"the worker exited early:\n{worker.log_tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{done} of {events} results in 600 s:\n{worker.log_tail()}")
                await asyncio.sleep(0.25)
    finally:
        exit_code = worker.stop(timeout_s=60)
    after = await end_offsets(bootstrap)
    records: Counter[str] = Counter()
    for topic, end in after.items():
        written = end - before.get(topic, 0)
        if written and topic != topology.input_topic and not topic.startswith("__"):
            records[kind_of(topic, topology, app_id)] += written
    clients = await asyncio.to_thread(produce_requests, requests_log, mark)
    requests = sum(n for client, n in clients.items() if client.startswith(WORKER_CLIENT))
    if exit_code not in (0, -signal.SIGTERM):
        progress(f"  the worker exited with {exit_code} (see {worker.log_path})")
    result = {
        "code": label,
        "case": case.title,
        "round": round_ + 1,
        "events": events,
        "events_in_flight": case.events_in_flight,
        "records": dict(records),
        "records_per_event": round(sum(records.values()) / events, 3),
        "produce_requests": requests,
        "produce_requests_per_event": round(requests / events, 3),
        "produce_requests_by_client": dict(clients),
        "worker_exit_code": exit_code,
    }
    progress(
        f"  {result['records_per_event']} records/event, "
        f"{result['produce_requests_per_event']} produce requests/event"
    )
    return result


KINDS = ("output", "answered", "paid", "spend", "dead letters/parked", "other")


def table(results: Sequence[dict[str, Any]]) -> str:
    """One row per code and case: medians over the rounds, and each round's requests (how
    many writes share a request depends on timing, so that figure varies between runs)."""
    head = "| code | case | events | records/event | " + " | ".join(KINDS[:4])
    head += " | produce requests/event (each round) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        rows.setdefault((r["case"], r["code"]), []).append(r)
    for runs in rows.values():
        first = runs[0]
        per_kind = [
            f"{statistics.median(r['records'].get(kind, 0) / r['events'] for r in runs):.2f}"
            for kind in KINDS[:4]
        ]
        records = statistics.median(r["records_per_event"] for r in runs)
        requests = [r["produce_requests_per_event"] for r in runs]
        each = f" ({', '.join(f'{n:.3f}' for n in requests)})" if len(runs) > 1 else ""
        lines.append(
            f"| {first['code']} | {first['case']} ({first['events_in_flight']} in flight) "
            f"| {first['events']} | {records:.2f} | {' | '.join(per_kind)} "
            f"| {statistics.median(requests):.3f}{each} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, run_dir: Path) -> list[dict[str, Any]]:
    requests_log = run_dir / "kafka-requests.log"
    config = run_dir / "log4j2-requests.properties"
    config.write_text(LOG4J.format(path=requests_log))
    codes: list[tuple[str, Path]] = []
    if args.against:
        codes.append((args.against, export_revision(args.against, run_dir / "code-against")))
    codes.append(("this checkout", PROJECT_ROOT))
    results: list[dict[str, Any]] = []
    with LocalKafka(run_dir / "kafka", log_config=config) as broker:
        bootstrap = broker.bootstrap_servers
        sim = simulator(run_dir, 0.0)
        try:
            await asyncio.to_thread(publish_org_samples, bootstrap, sim)
            requests_log.touch()
            for round_ in range(args.rounds):
                # Alternating A B, B A: a drift of the machine's load falls on both sides.
                order = codes if round_ % 2 == 0 else codes[::-1]
                for case in CASES:
                    for label, code in order:
                        results.append(
                            await run_case(
                                bootstrap,
                                run_dir,
                                sim,
                                requests_log,
                                case,
                                args.events,
                                code,
                                label,
                                round_,
                            )
                        )
        finally:
            sim.stop()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.writes", description=__doc__)
    parser.add_argument("--events", type=int, default=3000, help="events per run")
    parser.add_argument("--against", help="also run the worker's code at this git revision")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each code and case")
    parser.add_argument("--run-dir", type=Path, help="broker, logs and results.json")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="llmflow-writes-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    progress(f"run folder {run_dir}")
    results = asyncio.run(run(args, run_dir))
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
