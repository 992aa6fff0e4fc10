"""How long `llmflow compare` takes, and how much memory, on N events of synthetic support
tickets: N live outputs of the shadowed events, N more of events not replayed, N shadow
outputs (one in three answers as live's, the others changed).

    python -m dev.bench.compare --bootstrap HOST:PORT [--events 20000]

Runs `llmflow compare` as a child process and reports its wall time and peak RSS, then,
side by side in this process on the same 1,000 pairs of answers, the time of the text
similarity it uses (rapidfuzz's Indel) against difflib's ratio.
"""

from __future__ import annotations

import argparse
import difflib
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import yaml
from kafka import KafkaProducer

from dev import PROJECT_ROOT
from llmflow.schemas.outputs import ModelCallResult, Output, Totals
from llmflow.services.broker.topics import ensure_topics
from llmflow.services.shadow.compare import text_similarity

WORDS = [
    "refund",
    "invoice",
    "charged",
    "twice",
    "login",
    "broken",
    "order",
    "delayed",
    "account",
    "please",
    "help",
]


def _output(n: int, version: str, seed: int) -> Output:
    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(60))

    def call(name: str, answer: object, tokens: int, cost: float) -> ModelCallResult:
        latency = rng.uniform(50, 200)
        return ModelCallResult(
            name=name,
            kind="chat",
            call_id=f"{name}-{n}",
            model="gpt-4o-mini",
            prompt_version="1",
            answer=answer,
            tokens_in=tokens,
            tokens_out=tokens // 2,
            latency_ms=latency,
            cost_usd=cost,
        )

    verdict = {
        "category": rng.choice(["billing", "bug", "account"]),
        "priority": rng.choice(["low", "high", "urgent"]),
        "sentiment": rng.choice(["negative", "neutral"]),
    }
    calls = [
        call("classify", verdict, 50, 0.0001),
        call("summarize", text[:300], 50, 0.0001),
        call("draft_reply", text * 4, 400, 0.0005),
    ]
    now = datetime.now(UTC)
    return Output(
        event_id=f"e{n}",
        event_key="C-1001",
        tenant=None,
        source_topic="support.tickets",
        source_partition=n % 4,
        source_offset=n // 4,
        topology="support_triage",
        topology_version=version,
        org_record=None,
        images=[],
        calls=calls,
        totals=Totals.of(calls, 300.0),
        worker="bench",
        received_at=now,
        produced_at=now,
    )


def _produce(bootstrap: str, events: int) -> tuple[str, int]:
    """The live output topic (its shadow topic beside it) and the live outputs' mean size."""
    live = f"bench.compare.{uuid.uuid4().hex[:6]}"
    shadow = f"{live}.shadow.2.1.0"
    ensure_topics(bootstrap, [live, shadow], 4)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256_000)
    size = 0
    for n in range(2 * events):
        value = _output(n, "2.0.1", n).model_dump_json().encode()
        size += len(value)
        producer.send(live, value)
    for n in range(events):
        # One in three answers as live's (same seed), the others changed.
        producer.send(
            shadow, _output(n, "2.1.0", n if n % 3 == 0 else n + 7).model_dump_json().encode()
        )
    producer.flush()
    producer.close()
    return live, size // (2 * events)


def _similarity_side_by_side(pairs: int = 1000) -> tuple[float, float]:
    """Seconds per pair: (rapidfuzz, difflib), on the same pairs of draft replies."""
    texts = [
        (_output(n, "a", n).calls[2].answer, _output(n, "b", n + 7).calls[2].answer)
        for n in range(pairs)
    ]
    began = time.perf_counter()
    for a, b in texts:
        text_similarity(a, b)
    ours = (time.perf_counter() - began) / pairs
    began = time.perf_counter()
    for a, b in texts:
        difflib.SequenceMatcher(None, a, b).ratio()
    theirs = (time.perf_counter() - began) / pairs
    return ours, theirs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.compare", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args(argv)
    live, size = _produce(args.bootstrap, args.events)
    with tempfile.TemporaryDirectory() as folder:
        candidate = yaml.safe_load(
            (PROJECT_ROOT / "topologies/candidates/support_triage.yaml").read_text()
        )
        candidate["output_topic"] = live
        path = Path(folder) / "candidate.yaml"
        path.write_text(yaml.safe_dump(candidate))
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap}
        command = [sys.executable, "-m", "llmflow.services.cli", "compare", "--topology", str(path)]
        command += ["--live-topic", live, "--out", str(Path(folder) / "report")]
        began = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return 1
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ours, theirs = _similarity_side_by_side()
    print(
        f"compare: {args.events} events compared ({2 * args.events} live outputs of "
        f"{size} bytes read, {args.events} shadow): {seconds:.1f} s, peak RSS {peak_mb:.0f} MB\n"
        f"text similarity per pair of {len(_output(0, 'a', 0).calls[2].answer)}-character "
        f"answers: rapidfuzz {ours * 1e3:.3f} ms, difflib {theirs * 1e3:.3f} ms "
        f"(x{theirs / ours:.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
