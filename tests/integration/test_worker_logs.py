"""The worker logs plain lines in the one llmflow format, also the records of faust, with
its stderr in a pipe (a log collector) even when its stdout is a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# `LOG_FORMAT`: "2026-01-31 12:00:00,123 INFO faust.worker: ..."
LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def _read_until(fd: int, marker: bytes, timeout_s: float) -> bytes:
    """What `fd` gives until a line holds `marker` (or the time is up or it closes)."""
    got = b""
    deadline = time.monotonic() + timeout_s
    while marker not in got and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            got += chunk
    return got


def _drain(fd: int) -> bytes:
    got = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # a terminal whose other end closed
            break
        if not chunk:
            break
        got += chunk
    return got


def test_worker_logs_have_no_escape_codes_and_one_format(
    kafka_bootstrap: str, topology_copy: Callable[[str], Path], run_dir: Path
) -> None:
    topology = topology_copy("support_triage")
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "LLMFLOW_APP_ID": f"llmflow-test-{uuid.uuid4().hex[:8]}",
        "LLMFLOW_DATA_DIR": str(run_dir / "worker"),
        "LLMFLOW_PREFLIGHT": "false",  # no model is called: the worker only starts
    }
    terminal, stdout = pty.openpty()  # faust colours its logs when stdout is a terminal
    command = ["worker", "--topology", str(topology), "--loglevel", "info"]
    worker = subprocess.Popen(
        [sys.executable, "-m", "llmflow.services.cli", *command],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    os.close(stdout)
    try:
        assert worker.stderr is not None
        err = _read_until(worker.stderr.fileno(), b"Ready", timeout_s=120)
        assert b"Ready" in err, err.decode(errors="replace")[-3000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        _, rest = worker.communicate(timeout=60)
    err += rest
    out = _drain(terminal)
    os.close(terminal)
    assert b"\x1b[" not in err and b"\x1b[" not in out
    records = [line for line in err.splitlines() if LOG_LINE.match(line)]
    assert any(b" faust." in line for line in records), err.decode(errors="replace")[-3000:]
    # No record in faust's own format ("[2026-01-31 12:00:00,123] [pid] [INFO] ...").
    assert not re.search(rb"^\[\d{4}-", err, re.M)
