"""How fast a fresh org-data copy fills from one topic, run after run: for comparing two
versions of the materializer side by side on one broker and one topic.

    python -m dev.bench.materialize --bootstrap HOST:PORT [--records N | --topic T] [--runs 2]

Without `--topic`, N records of about 1 KB (those of `dev.bench.orgdata`) are produced to a
new compacted topic of 4 partitions, which is kept and named, so that another checkout
(`git worktree add`) can time the same topic: alternate the two, since the machine's speed
drifts from minute to minute. Each run fills a fresh store in a temporary folder and prints
records/s (from `start()` to `wait_ready()`) and this process's CPU time per record.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from dev.bench.orgdata import PARTITIONS, TABLE, _produce
from llmflow.services.broker.topics import ensure_topics
from llmflow.services.orgdata.materializer import Materializer
from llmflow.services.orgdata.store import OrgDataStore


def fill(bootstrap: str, topic: str, folder: Path) -> tuple[int, float, float]:
    """(records applied, seconds to ready, CPU seconds) for a fresh store."""
    gc.collect()
    store = OrgDataStore(folder / "copy.sqlite3")
    materializer = Materializer(store, bootstrap, {TABLE: topic})
    cpu = time.process_time()
    began = time.perf_counter()
    materializer.start()
    ready = materializer.wait_ready(1800)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu
    materializer.stop()
    store.close()
    if not ready:
        raise RuntimeError(f"not ready after 1800 s: {materializer.error!r}")
    return materializer.applied, elapsed, cpu


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.materialize", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", help="an org-data topic to read (default: produce one)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    topic = args.topic
    if topic is None:
        topic = f"bench.orgdata.{TABLE}.{uuid.uuid4().hex[:8]}"
        ensure_topics(args.bootstrap, [topic], PARTITIONS, 1, {"cleanup.policy": "compact"})
        produced = asyncio.run(_produce(args.bootstrap, topic, args.records))
        print(f"produced {produced['in_topic']:,} records to {topic}", flush=True)
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="llmflow-materialize-") as folder:
            applied, elapsed, cpu = fill(args.bootstrap, topic, Path(folder))
        print(
            f"run {run}: {applied:,} records in {elapsed:.1f} s, {applied / elapsed:,.0f} "
            f"records/s, {cpu * 1e6 / applied:.1f} µs CPU each",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
