"""`llmflow produce` and `llmflow consume` against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from llmflow.services.sdk import text_event

pytestmark = pytest.mark.integration


def _llmflow(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run(
        [sys.executable, "-m", "llmflow.services.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_produce_file_then_consume(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"sdk-{uuid.uuid4().hex[:8]}"
    events = [text_event(f"hello {n}", key=f"C-{n}", event_id=f"s-{n}") for n in range(3)]
    source = tmp_path / "events.jsonl"
    source.write_text("".join(e.model_dump_json() + "\n" for e in events) + "{broken\n")

    refused = _llmflow(
        "produce", "--topic", topic, "--file", str(source), bootstrap=kafka_bootstrap
    )
    assert refused.returncode == 2 and "events.jsonl:4: not a valid event" in refused.stderr

    source.write_text("".join(e.model_dump_json() + "\n" for e in events))
    sent = _llmflow("produce", "--topic", topic, "--file", str(source), bootstrap=kafka_bootstrap)
    assert sent.returncode == 0, sent.stderr
    single = ("produce", "--topic", topic, "--text", "one more", "--key", "C-9")
    assert _llmflow(*single, bootstrap=kafka_bootstrap).returncode == 0

    read = _llmflow(
        "consume", topic, "--max", "4", "--idle-timeout", "30", bootstrap=kafka_bootstrap
    )
    assert read.returncode == 0, read.stderr
    lines = [json.loads(line) for line in read.stdout.splitlines()]
    assert sorted(line["text"] for line in lines) == ["hello 0", "hello 1", "hello 2", "one more"]
