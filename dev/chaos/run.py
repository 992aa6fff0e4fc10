"""`make chaos`: every reliability scenario on one broker, one table.

    python -m dev.chaos [--quick] [--only kill,poison] [--out DIR] [--publish]
    python -m dev.chaos --only soak --soak-events 200000   # the long soak (`make soak`)

Exits 1 when any scenario lost events (or could not count them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from dev import PROJECT_ROOT
from dev.bench.harness import machine
from dev.chaos.report import failed, markdown_table, publish
from dev.chaos.rig import broker
from dev.chaos.scenarios import FULL, QUICK, SCENARIOS, Row, Suite, progress, run_one


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dev.chaos",
        description="Break the broker, the model endpoint and the workers while events flow; "
        "count what was lost, duplicated and paid for twice.",
    )
    parser.add_argument("--quick", action="store_true", help="short version of every scenario")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios among {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--soak-events",
        type=int,
        help="send this many soak events whatever time it takes (outside the run's budget)",
    )
    parser.add_argument("--out", type=Path, help="folder for logs and results (default: temp)")
    parser.add_argument(
        "--publish", action="store_true", help="write the table to docs/chaos.md and the README"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    if unknown := sorted(set(names) - set(SCENARIOS)):
        parser.error(f"unknown scenarios {unknown}; choose from {','.join(SCENARIOS)}")
    args.names = [n for n in SCENARIOS if n in names]
    return args


def log_clients(path: Path) -> None:
    """Progress on the terminal; the suite's own Kafka clients (whose errors while the
    broker is down are expected) into a file."""
    logging.basicConfig(
        level=logging.WARNING, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S"
    )
    to_file = logging.FileHandler(path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("kafka", "aiokafka"):
        client = logging.getLogger(name)
        client.setLevel(logging.INFO)
        client.propagate = False
        client.addHandler(to_file)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir: Path = args.out or Path(tempfile.mkdtemp(prefix="llmflow-chaos-"))
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    log_clients(run_dir / "logs" / "clients.log")
    plan = QUICK if args.quick else FULL
    if args.soak_events:
        plan = replace(plan, soak_events=args.soak_events, soak_feed_s=1e9, budget_s=None)
    began = time.monotonic()
    progress(f"chaos {'quick' if args.quick else 'full'} run, logs in {run_dir}")
    rows: list[Row] = []
    with broker(run_dir) as kafka:
        suite = Suite(kafka, run_dir, plan, started=began)
        for name in args.names:
            progress(f"{name}: start")
            rows.append(asyncio.run(run_one(suite, name)))
            progress(f"{name}: done in {rows[-1].elapsed_s:.0f} s")
    elapsed = time.monotonic() - began
    table = markdown_table(rows)
    about = machine()
    summary = (
        f"{'Quick' if args.quick else 'Full'} run, {elapsed / 60:.1f} min; "
        f"{about['cpu_count']} cores ({about['cpu']}), Python {about['python']}, "
        f"faust-streaming {about.get('faust-streaming', '?')}, "
        f"aiokafka {about.get('aiokafka', '?')}."
    )
    (run_dir / "chaos.md").write_text(f"{table}\n\n{summary}\n")
    (run_dir / "chaos.json").write_text(
        json.dumps(
            {
                "quick": args.quick,
                "elapsed_s": elapsed,
                "machine": about,
                "rows": [asdict(row) for row in rows],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(table)
    print(f"\n{summary} Logs and results in {run_dir}")
    if args.publish:
        for path in publish(
            table, summary, PROJECT_ROOT / "docs" / "chaos.md", PROJECT_ROOT / "README.md"
        ):
            print(f"published to {path}")
    if lost := failed(rows):
        print(f"events lost or not counted in: {', '.join(lost)}", file=sys.stderr)
        return 1
    return 0
