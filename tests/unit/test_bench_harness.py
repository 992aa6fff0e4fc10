"""The benchmark's CPU of a supervisor counts its whole process tree, also the children
that have exited since."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from dev.bench.harness import child_pids, proc_cpu_s, proc_tree_cpu_s, process_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"


def test_a_tree_counts_running_and_exited_children() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"subprocess.run([sys.executable, '-c', {BURN!r}])\n"  # exits, is waited for
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        (sleeper,) = child_pids(parent.pid)
        assert not process_gone(sleeper)
        # The burner's 0.3 s are in the parent's cutime; the sleeper's start-up counts too.
        assert proc_tree_cpu_s(parent.pid) >= proc_cpu_s(parent.pid) + 0.25
    finally:
        for child in child_pids(parent.pid):
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait()
    assert process_gone(parent.pid)
