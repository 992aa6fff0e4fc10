"""How many events one gateway process accepts per second, and how long a publish takes.

    python -m dev.bench.gateway [--bootstrap HOST:PORT] [--events 5000] [--clients 16]

Starts a local broker unless `--bootstrap` names one, creates the topics of a copy of
support_triage with a unique suffix, starts `llmflow gateway` (one process: one event loop,
so about one core at most) and sends `--events` events over `--clients` concurrent HTTP
connections, first one event a request, then batches of 100. Prints, per batch size: events
accepted per second (202s over the wall time), and the p50 and p99 of a request's time from
sending to its 202 (the broker's acks included). No worker runs: the gateway's publish path
alone is measured. The client runs on the same machine and takes CPU of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from dev import launch
from dev.bench.report import make_figure, make_ratio
from dev.topologies import copy_topology
from llmflow.services.broker.local import LocalKafka, free_port
from llmflow.services.broker.topics import ensure_topics

TOKEN = "bench-token-0123456789"


def _event(n: int, run: str) -> dict[str, Any]:
    return {
        "id": f"{run}-{n}",
        "kind": "text",
        "key": f"C-{1001 + n % 24}",
        "source": "bench",
        "timestamp": datetime.now(UTC).isoformat(),
        "text": f"Ticket {n}: my invoice was charged twice, please help",
    }


async def _send(url: str, events: int, batch: int, clients: int) -> dict[str, float]:
    run = uuid.uuid4().hex[:8]
    bodies = [
        json.dumps([_event(n, run) for n in range(start, min(start + batch, events))]).encode()
        for start in range(0, events, batch)
    ]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    latencies: list[float] = []
    accepted = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.json()
                if response.status != 202:
                    raise RuntimeError(f"{response.status}: {answer}")
                accepted += len(answer["events"])
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "batch": batch,
        "events": accepted,
        "events_per_s": accepted / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def _bench(bootstrap: str, folder: Path, events: int, clients: int) -> list[dict[str, float]]:
    copy = copy_topology("support_triage", folder, uuid.uuid4().hex[:8])
    ensure_topics(bootstrap, copy.topology.topics, 4)
    port = free_port()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LLMFLOW_GATEWAY_PORT": str(port),
        "LLMFLOW_GATEWAY_TOKENS": json.dumps({TOKEN: {"tenant": "bench"}}),
    }
    gateway = launch.spawn("gateway", ["gateway", "--topology", str(copy.path)], folder, env)
    try:
        launch.wait_http(f"http://127.0.0.1:{port}/readyz", gateway, timeout_s=60)
        url = f"http://127.0.0.1:{port}/v1/topics/{copy.topology.input_topic}/events"
        asyncio.run(_send(url, min(events, 200), 1, clients))  # warm-up
        return [asyncio.run(_send(url, events, batch, clients)) for batch in (1, 100)]
    finally:
        gateway.stop()


TARGET_BATCHED_EVENTS_PER_S = 5000.0


def scenario(bootstrap: str, run_dir: Path, quick: bool) -> dict[str, Any]:
    """The `gateway` scenario of `make bench`: both batch sizes against one gateway, one after
    the other, and their ratio; events/s with batches of 100 against its target."""
    events, clients = (2000 if quick else 10_000), 16
    folder = run_dir / "gateway"
    folder.mkdir(parents=True, exist_ok=True)
    single, batched = _bench(bootstrap, folder, events, clients)
    return {
        "params": {"events": events, "clients": clients, "partitions": 4, "worker": "none"},
        "runs": [single, batched],
        "ratios": [
            make_ratio(
                "events/s accepted, batches of 100 / batches of 1",
                batched["events_per_s"],
                single["events_per_s"],
                unit="events/s",
            )
        ],
        "figures": [
            make_figure(
                "events/s accepted, batches of 100",
                batched["events_per_s"],
                unit="events/s",
                target=TARGET_BATCHED_EVENTS_PER_S,
            ),
            make_figure("events/s accepted, batches of 1", single["events_per_s"], unit="events/s"),
            make_figure(
                "publish-to-202 p99, batches of 1", single["p99_ms"], unit="ms", better="lower"
            ),
            make_figure(
                "publish-to-202 p99, batches of 100", batched["p99_ms"], unit="ms", better="lower"
            ),
        ],
        "note": (
            f"One gateway process, {clients} client connections on the same machine (their CPU "
            "is taken from the same 2 cores), no worker running; a publish is timed from "
            "sending the request to its 202, the broker's acks (acks=all) included."
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.gateway", description=__doc__)
    parser.add_argument("--bootstrap", help="a broker to use (default: start a local one)")
    parser.add_argument("--events", type=int, default=5000, help="events per batch size")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="llmflow-bench-gateway-") as tmp:
        folder = Path(tmp)
        if args.bootstrap:
            rows = _bench(args.bootstrap, folder, args.events, args.clients)
        else:
            with LocalKafka(folder / "kafka") as broker:
                rows = _bench(broker.bootstrap_servers, folder, args.events, args.clients)
    print(f"gateway publish, {args.clients} clients, {os.cpu_count()} CPUs on this machine")
    print("batch  events  events/s  p50 ms  p99 ms")
    for row in rows:
        print(
            f"{row['batch']:>5.0f}  {row['events']:>6.0f}  {row['events_per_s']:>8.0f}  "
            f"{row['p50_ms']:>6.1f}  {row['p99_ms']:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
