"""The openai SDK's default httpx transport against its aiohttp transport, side by side.

Both transports call the same model SIMULATOR process with the same payloads, so the only
difference between two runs is the HTTP stack inside the client. Runs are interleaved
(httpx, aiohttp, aiohttp, httpx per round) so slow drift of the machine, such as thermal
throttling or a noisy neighbour, lands on both transports equally; the table shows medians.

    python -m dev.bench.http_transport [--calls N] [--latency-ms 200] [--rounds 2]
        [--out results/http_transport.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletionMessageParam

from dev.launch import start_modelsim
from llmflow.services.broker.local import free_port

Transport = Literal["httpx", "aiohttp"]
# ABBA within a round: a drift that grows steadily over the round costs both transports the same.
ROUND_ORDER: tuple[Transport, ...] = ("httpx", "aiohttp", "aiohttp", "httpx")
CONCURRENCIES = (50, 200)
# Enough calls for stable percentiles while the whole run stays under three minutes on 2 cores.
DEFAULT_CALLS = {50: 1000, 200: 2000}
JITTER_SHARE = 0.10
MODEL = "gpt-4o-mini"
MAX_TOKENS = 50


@dataclass
class Outcome:
    """What one batch of calls produced: latency of each answered call, errors by kind."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Snapshot:
    """Clocks and counters read on both sides of a measured batch."""

    wall_s: float
    client_cpu_s: float
    server_cpu_s: float
    server_calls: int


@dataclass(frozen=True)
class Run:
    """One measured batch of one transport at one concurrency."""

    concurrency: int
    transport: Transport
    round: int
    calls: int
    completed: int
    errors: dict[str, int]
    server_calls: int
    wall_s: float
    calls_per_s: float
    efficiency: float
    client_cpu_s_per_1k: float
    server_cpu_s_per_1k: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Summary:
    """Medians over the runs of one transport at one concurrency."""

    concurrency: int
    transport: Transport
    runs: int
    calls_per_s: float
    calls_per_s_min: float
    calls_per_s_max: float
    efficiency: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_s_per_1k: float
    server_cpu_s_per_1k: float
    errors: int


# --- payloads and calls ---------------------------------------------------------------------


def messages(tag: str, number: int) -> list[ChatCompletionMessageParam]:
    """A small chat whose text is unique per call yet identical for both transports."""
    return [
        {"role": "system", "content": "You are a terse support assistant. Answer in one line."},
        {
            "role": "user",
            "content": f"[{tag}] Ticket {number:06d}: invoice INV-{number:06d} shows the wrong "
            "VAT rate for the customer's country. What should support do first?",
        },
    ]


def make_client(transport: Transport, base_url: str) -> AsyncOpenAI:
    """The client as a worker builds it, minus retries so failures show up as errors."""
    return AsyncOpenAI(
        base_url=base_url,
        api_key="bench",
        max_retries=0,
        timeout=30,
        http_client=DefaultAioHttpClient() if transport == "aiohttp" else None,
    )


async def one_call(client: AsyncOpenAI, tag: str, number: int, outcome: Outcome) -> None:
    """Time one chat call; an empty answer counts as an error so a broken stack cannot win."""
    started = time.perf_counter()
    try:
        response = await client.chat.completions.create(
            model=MODEL, messages=messages(tag, number), max_tokens=MAX_TOKENS
        )
    except openai.APIError as exc:
        outcome.errors[type(exc).__name__] += 1
        return
    if not response.choices or not response.choices[0].message.content:
        outcome.errors["EmptyAnswer"] += 1
        return
    outcome.latencies_s.append(time.perf_counter() - started)


async def drive(client: AsyncOpenAI, tag: str, calls: int, concurrency: int) -> Outcome:
    """`calls` calls with exactly `concurrency` in flight until fewer than that are left.

    Workers share one iterator of call numbers, so a worker starts its next call the moment
    its previous one returns: a closed loop, like a worker holding a fixed number of events.
    """
    outcome = Outcome()
    numbers: Iterator[int] = iter(range(calls))

    async def worker() -> None:
        for number in numbers:
            await one_call(client, tag, number, outcome)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, calls)):
            group.create_task(worker())
    return outcome


# --- measurements ---------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of another process, from /proc/<pid>/stat, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the ")" that ends the command name start at field 3 (state);
    # utime and stime are fields 14 and 15.
    after_name = stat.rsplit(")", 1)[1].split()
    ticks = int(after_name[11]) + int(after_name[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def simulator_calls(base_url: str) -> int:
    """Requests the SIMULATOR has answered, to check it saw every call the client counted."""
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/sim/stats", timeout=5) as response:
        return int(json.load(response)["total"])


def snapshot(sim_pid: int, base_url: str) -> Snapshot:
    """Read all clocks and counters; blocking, so callers run it in a thread."""
    return Snapshot(
        wall_s=time.perf_counter(),
        client_cpu_s=time.process_time(),
        server_cpu_s=process_cpu_s(sim_pid),
        server_calls=simulator_calls(base_url),
    )


def percentile_ms(sorted_s: Sequence[float], share: float) -> float:
    """Nearest-rank percentile in milliseconds; NaN when nothing was answered."""
    if not sorted_s:
        return math.nan
    rank = max(1, math.ceil(share * len(sorted_s)))
    return sorted_s[rank - 1] * 1000


def make_run(
    transport: Transport,
    concurrency: int,
    round_: int,
    calls: int,
    latency_s: float,
    outcome: Outcome,
    before: Snapshot,
    after: Snapshot,
) -> Run:
    """Turn raw clocks into rates; efficiency 1.0 means the latency alone limited throughput."""
    wall_s = after.wall_s - before.wall_s
    completed = len(outcome.latencies_s)
    calls_per_s = completed / wall_s
    latencies = sorted(outcome.latencies_s)
    return Run(
        concurrency=concurrency,
        transport=transport,
        round=round_,
        calls=calls,
        completed=completed,
        errors=dict(outcome.errors),
        server_calls=after.server_calls - before.server_calls,
        wall_s=wall_s,
        calls_per_s=calls_per_s,
        efficiency=calls_per_s / (concurrency / latency_s),
        client_cpu_s_per_1k=(after.client_cpu_s - before.client_cpu_s) * 1000 / calls,
        server_cpu_s_per_1k=(after.server_cpu_s - before.server_cpu_s) * 1000 / calls,
        p50_ms=percentile_ms(latencies, 0.50),
        p95_ms=percentile_ms(latencies, 0.95),
        p99_ms=percentile_ms(latencies, 0.99),
    )


async def measure(
    transport: Transport,
    concurrency: int,
    round_: int,
    calls: int,
    latency_s: float,
    base_url: str,
    sim_pid: int,
) -> Run:
    """A fresh client, a warm-up that opens its connections, then the measured batch."""
    client = make_client(transport, base_url)
    try:
        await drive(client, "warm-up", concurrency, concurrency)
        gc.collect()  # garbage from the previous run must not be collected on this run's clock
        before = await asyncio.to_thread(snapshot, sim_pid, base_url)
        outcome = await drive(client, "measured", calls, concurrency)
        after = await asyncio.to_thread(snapshot, sim_pid, base_url)
    finally:
        await client.close()
    return make_run(transport, concurrency, round_, calls, latency_s, outcome, before, after)


# --- summary --------------------------------------------------------------------------------


def summarise(runs: Sequence[Run], concurrency: int, transport: Transport) -> Summary:
    """Medians, not means: one run disturbed by the machine should not move the verdict."""
    mine = [r for r in runs if r.concurrency == concurrency and r.transport == transport]

    def median(name: str) -> float:
        return statistics.median(float(getattr(r, name)) for r in mine)

    rates = [r.calls_per_s for r in mine]
    return Summary(
        concurrency=concurrency,
        transport=transport,
        runs=len(mine),
        calls_per_s=median("calls_per_s"),
        calls_per_s_min=min(rates),
        calls_per_s_max=max(rates),
        efficiency=median("efficiency"),
        p50_ms=median("p50_ms"),
        p95_ms=median("p95_ms"),
        p99_ms=median("p99_ms"),
        client_cpu_s_per_1k=median("client_cpu_s_per_1k"),
        server_cpu_s_per_1k=median("server_cpu_s_per_1k"),
        errors=sum(sum(r.errors.values()) for r in mine),
    )


def ratios(httpx: Summary, aiohttp: Summary) -> dict[str, float]:
    """aiohttp / httpx: above 1 is better for throughput, below 1 is better for the others."""
    return {
        "throughput": aiohttp.calls_per_s / httpx.calls_per_s,
        "p95_latency": aiohttp.p95_ms / httpx.p95_ms,
        "client_cpu_per_call": aiohttp.client_cpu_s_per_1k / httpx.client_cpu_s_per_1k,
    }


def cpu_model() -> str:
    """The CPU's marketing name; platform.processor() is often empty on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the numbers depend on besides the code: cores, CPU and library versions."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "openai": openai.__version__,
        "httpx2": metadata.version("httpx2"),
        "aiohttp": metadata.version("aiohttp"),
        "platform": platform.platform(),
    }


def markdown(summaries: Sequence[Summary], by_c: dict[int, dict[str, float]]) -> str:
    """The medians as a Markdown table, then the aiohttp / httpx ratios per concurrency."""
    lines = [
        "| C | transport | runs | calls/s (min-max) | efficiency | p50 ms | p95 ms | p99 ms "
        "| client CPU s/1k calls | simulator CPU s/1k calls | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.concurrency} | {s.transport} | {s.runs} "
            f"| {s.calls_per_s:.1f} ({s.calls_per_s_min:.1f}-{s.calls_per_s_max:.1f}) "
            f"| {s.efficiency:.3f} | {s.p50_ms:.1f} | {s.p95_ms:.1f} | {s.p99_ms:.1f} "
            f"| {s.client_cpu_s_per_1k:.3f} | {s.server_cpu_s_per_1k:.3f} | {s.errors} |"
        )
    lines += [
        "",
        "| C | aiohttp/httpx throughput | aiohttp/httpx p95 latency "
        "| aiohttp/httpx client CPU/call |",
        "|---:|---:|---:|---:|",
    ]
    for c, r in by_c.items():
        lines.append(
            f"| {c} | {r['throughput']:.3f} | {r['p95_latency']:.3f} "
            f"| {r['client_cpu_per_call']:.3f} |"
        )
    return "\n".join(lines)


# --- command --------------------------------------------------------------------------------


def calls_for(concurrency: int, override: int | None) -> int:
    """Measured calls per run: the override, else at least ten full waves of C calls."""
    return override if override is not None else DEFAULT_CALLS[concurrency]


async def run_all(args: argparse.Namespace, base_url: str, sim_pid: int) -> list[Run]:
    """Every concurrency, every round, transports in ABBA order, printing progress to stderr."""
    latency_s = args.latency_ms / 1000
    runs: list[Run] = []
    for concurrency in CONCURRENCIES:
        calls = calls_for(concurrency, args.calls)
        for round_ in range(args.rounds):
            for transport in ROUND_ORDER:
                run = await measure(
                    transport, concurrency, round_, calls, latency_s, base_url, sim_pid
                )
                runs.append(run)
                print(
                    f"C={concurrency:<3} round {round_} {transport:<7} "
                    f"{run.calls_per_s:7.1f} calls/s  p95 {run.p95_ms:6.1f} ms  "
                    f"errors {sum(run.errors.values())}",
                    file=sys.stderr,
                    flush=True,
                )
    return runs


def simulator_flags(latency_ms: float) -> list[str]:
    """Latency with +/-10 % jitter: realistic spread without hiding transport differences."""
    return ["--latency-ms", f"{latency_ms:g}", "--jitter-ms", f"{latency_ms * JITTER_SHARE:g}"]


def report(args: argparse.Namespace, runs: Sequence[Run]) -> dict[str, Any]:
    """Everything the JSON file holds: settings, machine, every run, medians and ratios."""
    summaries = [summarise(runs, c, t) for c in CONCURRENCIES for t in ("httpx", "aiohttp")]
    by_c = {
        c: ratios(summarise(runs, c, "httpx"), summarise(runs, c, "aiohttp")) for c in CONCURRENCIES
    }
    return {
        "settings": {
            "latency_ms": args.latency_ms,
            "jitter_ms": args.latency_ms * JITTER_SHARE,
            "rounds": args.rounds,
            "round_order": list(ROUND_ORDER),
            "calls": {str(c): calls_for(c, args.calls) for c in CONCURRENCIES},
            "model": MODEL,
            "max_tokens": MAX_TOKENS,
        },
        "machine": machine(),
        "runs": [asdict(r) for r in runs],
        "summary": [asdict(s) for s in summaries],
        "ratios_aiohttp_over_httpx": {str(c): r for c, r in by_c.items()},
        "table_markdown": markdown(summaries, by_c),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Defaults give a full comparison in about 75 s on two cores."""
    parser = argparse.ArgumentParser(
        prog="python -m dev.bench.http_transport",
        description="Compare the openai SDK's httpx and aiohttp transports on the SIMULATOR.",
    )
    parser.add_argument(
        "--calls", type=int, help="measured calls per run (default 1000 at C=50, 2000 at C=200)"
    )
    parser.add_argument("--latency-ms", type=float, default=200.0, help="simulated model latency")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds per concurrency")
    parser.add_argument("--out", type=Path, default=Path("results/http_transport.json"))
    args = parser.parse_args(argv)
    if (args.calls is not None and args.calls < 1) or args.rounds < 1 or args.latency_ms <= 0:
        parser.error("--calls and --rounds must be >= 1 and --latency-ms > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """One SIMULATOR process for all runs, so server-side cost is the same for both transports."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-modelsim-") as log_dir:
        sim = start_modelsim(free_port(), Path(log_dir), simulator_flags(args.latency_ms))
        try:
            runs = asyncio.run(run_all(args, sim.extra["base_url"], sim.pid))
        finally:
            sim.stop()
    result = report(args, runs)
    print(result["table_markdown"])
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in result["machine"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
