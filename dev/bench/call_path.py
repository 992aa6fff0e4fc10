"""CPU per model call through `ModelClient.run`: the SDK's typed call path against the lean one.

Both sides run the same `ModelClient` (quota-free, no hedging) with the same aiohttp client
against one model SIMULATOR process; they differ only in `_request`:

- sdk: `chat.completions.with_raw_response.create(...)` / `embeddings...create(...)` and
  `.parse()`, the call path before `wire.py` (kept here, for this comparison only);
- lean: `client.post(path, cast_to=httpx2.Response, content=...)` and `wire.py` reading
  the few fields a call needs.

The simulator runs in its own process, so the process CPU clock of this one is the client's
alone (the simulator's own CPU is reported apart). Sides alternate per round (A B, B A, ...)
so drift of a shared machine lands on both; the table shows medians and lean/sdk ratios.
`--only SIDE --rounds 1` runs one side, for a profiler attached to this process:

    python -m dev.bench.call_path [--calls 4000] [--concurrency 200] [--rounds 4]
        [--kinds chat,structured,embedding] [--latency-ms 50] [--only sdk|lean]
        [--out results/call_path.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from openai import AsyncOpenAI

from dev.bench.http_transport import machine, process_cpu_s
from dev.bench.micro import abba
from dev.launch import start_modelsim
from llmflow.services.broker.local import free_port
from llmflow.services.models.client import ModelClient, make_openai_client
from llmflow.services.models.retry import RetryPolicy
from llmflow.services.models.wire import Answer
from llmflow.topologies.spec import ModelCall, Target

Side = Literal["sdk", "lean"]
SIDES: tuple[Side, ...] = ("sdk", "lean")
KINDS = ("chat", "structured", "embedding")
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["category", "urgent", "summary"],
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "other"]},
        "urgent": {"type": "boolean"},
        "summary": {"type": "string", "maxLength": 200},
    },
}
SYSTEM = "You are a terse support assistant. Answer in one line."


class SdkModelClient(ModelClient):
    """`ModelClient` with the call path before `wire.py`: the SDK's typed create + parse."""

    async def _request(
        self,
        client: AsyncOpenAI,
        call: ModelCall,
        target: Target,
        request: dict[str, Any],
        call_id: str,
        request_timeout_s: float | None = None,
    ) -> tuple[Answer, Any]:
        options: dict[str, Any] = {"extra_headers": {"x-llmflow-call-id": call_id}}
        if request_timeout_s is not None:
            options["timeout"] = request_timeout_s
        if call.kind == "embedding":
            raw = await client.embeddings.with_raw_response.create(
                model=target.model, **request, **options
            )
            response = raw.parse()
            answer = Answer(
                "", response.data[0].embedding, response.model, response.usage.prompt_tokens, 0
            )
            return answer, raw.headers
        raw_chat = await client.chat.completions.with_raw_response.create(
            model=target.model, **options, **request
        )
        chat = raw_chat.parse()
        usage = chat.usage
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        text = chat.choices[0].message.content or ""
        return Answer(text, None, chat.model, *tokens), raw_chat.headers


def make_call(kind: str) -> ModelCall:
    spec: dict[str, Any] = {"name": kind, "prompt": {"version": "p1", "user": "u"}}
    if kind == "embedding":
        spec |= {"kind": "embedding", "model": "sim-embed", "dimensions": 256}
    else:
        spec |= {"model": "gpt-4o-mini", "max_tokens": 50}
    if kind == "structured":
        spec["output_schema"] = SCHEMA
    return ModelCall.model_validate(spec)


def user_text(tag: str, number: int) -> str:
    return (
        f"[{tag}] Ticket {number:06d}: invoice INV-{number:06d} shows the wrong VAT rate for "
        "the customer's country. What should support do first?"
    )


@dataclass(frozen=True)
class Run:
    kind: str
    side: Side
    round: int
    calls: int
    failed: int
    wall_s: float
    client_cpu_ms_per_call: float
    simulator_cpu_ms_per_call: float


async def drive(
    client: ModelClient, call: ModelCall, tag: str, calls: int, concurrency: int
) -> int:
    """`calls` calls, `concurrency` in flight (a closed loop); returns how many failed."""
    numbers: Iterator[int] = iter(range(calls))
    failed = 0
    system = None if call.kind == "embedding" else SYSTEM

    async def worker() -> None:
        nonlocal failed
        for n in numbers:
            try:
                result = await client.run(
                    call, call_id=f"{tag}-{n}", system=system, user=user_text(tag, n), image_urls=[]
                )
            except Exception:
                failed += 1
                continue
            if not result.answer:
                failed += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, calls)):
            group.create_task(worker())
    return failed


async def measure(
    side: Side, kind: str, round_: int, args: argparse.Namespace, base_url: str, sim_pid: int
) -> Run:
    """A fresh client, a warm-up wave that opens its connections, then the measured batch."""
    policy = RetryPolicy(max_attempts=1, attempt_timeout_s=30)
    sdk = make_openai_client(base_url, "bench", policy)
    cls = SdkModelClient if side == "sdk" else ModelClient
    client = cls({"default": sdk}, policy=policy)
    call = make_call(kind)
    try:
        await drive(client, call, "warm-up", args.concurrency, args.concurrency)
        gc.collect()  # the previous run's garbage must not be collected on this run's clock
        wall, cpu, sim = time.perf_counter(), time.process_time(), process_cpu_s(sim_pid)
        failed = await drive(client, call, f"{side}-{round_}", args.calls, args.concurrency)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        sim = process_cpu_s(sim_pid) - sim
    finally:
        await client.close()
    return Run(
        kind,
        side,
        round_,
        args.calls,
        failed,
        wall,
        cpu * 1000 / args.calls,
        sim * 1000 / args.calls,
    )


async def run_all(args: argparse.Namespace, base_url: str, sim_pid: int) -> list[Run]:
    runs: list[Run] = []
    sides: Sequence[Side] = (args.only,) if args.only else SIDES
    for kind in args.kinds:
        for round_, side in abba(sides, args.rounds):
            run = await measure(side, kind, round_, args, base_url, sim_pid)
            runs.append(run)
            print(
                f"{kind:<10} round {round_} {side:<4} {run.client_cpu_ms_per_call:6.3f} ms CPU/call"
                f"  {args.calls / run.wall_s:7.1f} calls/s  failed {run.failed}",
                file=sys.stderr,
                flush=True,
            )
    return runs


def table(runs: Sequence[Run], kinds: Sequence[str]) -> str:
    """Medians per kind and side, and lean/sdk: below 1 means the lean path costs less."""
    lines = [
        "| kind | sdk CPU ms/call | lean CPU ms/call | lean/sdk CPU | sdk calls/s | lean calls/s "
        "| simulator CPU ms/call (sdk, lean) | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in kinds:

        def median(side: Side, name: str, kind: str = kind) -> float:
            values = [
                float(getattr(r, name)) if name != "rate" else r.calls / r.wall_s
                for r in runs
                if r.kind == kind and r.side == side
            ]
            return statistics.median(values) if values else float("nan")

        sdk, lean = (
            median("sdk", "client_cpu_ms_per_call"),
            median("lean", "client_cpu_ms_per_call"),
        )
        failed = sum(r.failed for r in runs if r.kind == kind)
        lines.append(
            f"| {kind} | {sdk:.3f} | {lean:.3f} | {lean / sdk:.3f} | {median('sdk', 'rate'):.0f} "
            f"| {median('lean', 'rate'):.0f} | {median('sdk', 'simulator_cpu_ms_per_call'):.3f}, "
            f"{median('lean', 'simulator_cpu_ms_per_call'):.3f} | {failed} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dev.bench.call_path",
        description="CPU per call of ModelClient.run: the SDK's typed path against the lean one.",
    )
    parser.add_argument("--calls", type=int, default=4000, help="measured calls per run")
    parser.add_argument("--concurrency", type=int, default=200, help="calls in flight")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, sides alternating")
    parser.add_argument("--kinds", default=",".join(KINDS), help="chat,structured,embedding")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="simulated latency")
    parser.add_argument("--only", choices=SIDES, help="one side only (to profile it)")
    parser.add_argument("--out", type=Path, help="also write every run and the table as JSON")
    args = parser.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not set(args.kinds) <= set(KINDS) or not args.kinds:
        parser.error(f"--kinds must name some of {', '.join(KINDS)}")
    if args.calls < 1 or args.concurrency < 1 or args.rounds < 1 or args.latency_ms < 0:
        parser.error("--calls, --concurrency and --rounds must be >= 1, --latency-ms >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    flags = ["--latency-ms", f"{args.latency_ms:g}"]
    with tempfile.TemporaryDirectory(prefix="bench-modelsim-") as log_dir:
        sim = start_modelsim(free_port(), Path(log_dir), flags)
        try:
            runs = asyncio.run(run_all(args, sim.extra["base_url"], sim.pid))
        finally:
            sim.stop()
    result = table(runs, args.kinds)
    print(result)
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine().items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report: dict[str, Any] = {
            "settings": {k: str(v) for k, v in vars(args).items()},
            "machine": machine(),
            "runs": [asdict(r) for r in runs],
            "table_markdown": result,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
