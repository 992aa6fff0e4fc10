"""`make bench`: every benchmark scenario in one run, on one broker, into one report.

    python -m dev.bench.run [--quick] [--out results/<UTC time>] [--publish docs/bench]
        [--only orgdata,producer_sdk,...]

Micro scenarios (image path, contract cost, producer SDK) run first, then the org data
scenario (materialization, lookups, retrieval), the HTTP gateway's publish path, then the
worker scenarios (concurrency, overhead, latency, scaling, memory, graph, processes) against
the model SIMULATOR. `--only` runs a subset.
Writes results.json, results.md and chart.png into the output folder and prints it; with
--publish, also copies results.md and chart.png where the README shows them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dev.bench import gateway, micro, worker_scenarios
from dev.bench.orgdata import orgdata
from dev.bench.report import machine, markdown_table, write_report

SCENARIOS = (*micro.SCENARIOS, "orgdata", "gateway", *worker_scenarios.SCENARIOS)
NEEDS_BROKER = {"producer_sdk", "orgdata", "gateway", *worker_scenarios.SCENARIOS}


def guarded(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`run()`, or, when it fails, a result that says so (the other scenarios still run)."""
    began = time.monotonic()
    try:
        result = run()
    except Exception as exc:
        traceback.print_exc()
        result = {
            "scenario": name,
            "error": f"{type(exc).__name__}: {exc}"[-4000:],
            "ratios": [],
            "note": f"failed: {type(exc).__name__}: {str(exc)[:300]}",
        }
    result.setdefault("elapsed_s", round(time.monotonic() - began, 1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about 3 minutes)")
    parser.add_argument("--out", type=Path, help="report folder (default results/<UTC time>)")
    parser.add_argument("--publish", type=Path, help="copy results.md and chart.png here")
    parser.add_argument(
        "--only", help=f"comma-separated scenarios to run (default all): {','.join(SCENARIOS)}"
    )
    args = parser.parse_args(argv)
    only = [n.strip() for n in (args.only or ",".join(SCENARIOS)).split(",") if n.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown or not only:
        parser.error(f"unknown scenarios {unknown}; choose from {','.join(SCENARIOS)}")
    chosen = [name for name in SCENARIOS if name in only]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.out or Path("results") / stamp
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    plan = worker_scenarios.QUICK if args.quick else worker_scenarios.FULL
    run_dir = Path(tempfile.mkdtemp(prefix="llmflow-bench-"))
    print(f"benchmark run: report in {out}, logs in {run_dir}", flush=True)

    scenarios: dict[str, Any] = {}
    if "image_path" in chosen:
        scenarios["image_path"] = micro.image_path(15 if args.quick else 40)
    if "contract_cost" in chosen:
        scenarios["contract_cost"] = micro.contract_cost(5000 if args.quick else 20000)
    if NEEDS_BROKER & set(chosen):
        with worker_scenarios.broker(run_dir) as (bootstrap, broker_pid):
            if "producer_sdk" in chosen:
                messages = 5000 if args.quick else 20000
                scenarios["producer_sdk"] = micro.producer_sdk(messages, bootstrap=bootstrap)
            if "orgdata" in chosen:
                scenarios["orgdata"] = guarded(
                    "orgdata", lambda: orgdata(bootstrap, run_dir, args.quick)
                )
            if "gateway" in chosen:
                scenarios["gateway"] = guarded(
                    "gateway", lambda: gateway.scenario(bootstrap, run_dir, args.quick)
                )
            workers = [name for name in worker_scenarios.SCENARIOS if name in chosen]
            if workers:
                bench = worker_scenarios.Bench(bootstrap, run_dir, plan, broker_pid)
                scenarios |= worker_scenarios.run_all(bench, workers)

    results = {
        "machine": machine(),
        "quick": args.quick,
        "elapsed_s": round(time.monotonic() - began, 1),
        "scenarios": scenarios,
    }
    written = write_report(results, out)
    print(markdown_table(results))
    print(f"\nbenchmark took {results['elapsed_s']:.0f} s; report: {out}")
    for path in written:
        print(f"  {path}")
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        for name in ("results.md", "chart.png"):
            shutil.copy(out / name, args.publish / name)
        print(f"published to {args.publish}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
