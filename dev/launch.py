"""Start the system's processes as children: used by the demo, the tests and the benchmarks.

Children run the shipped entry points as modules of this interpreter (`python -m
llmflow.services.cli ...`, `python -m llmflow.services.modelsim ...`), so they use the same
environment as the parent whether or not its scripts are on PATH.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmflow.errors import LlmflowError


@dataclass
class Child:
    """A running child process (an `llmflow` subcommand, the simulator) with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (faust shuts down cleanly and commits), SIGKILL if it hangs."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL: a crash, for tests of what survives one."""
        if self.alive():
            self.process.kill()
            self.process.wait()


CLI = "llmflow.services.cli"
MODELSIM = "llmflow.services.modelsim"


def spawn(
    name: str,
    args: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    module: str = CLI,
) -> Child:
    """`python -m <module> <args>` (by default the `llmflow` command), output to a log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Child(name, process, log_path)


def wait_http(url: str, child: Child | None = None, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise LlmflowError(f"{child.name} exited early:\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise LlmflowError(f"{url} did not answer in {timeout_s:.0f} s")


def start_modelsim(port: int, log_dir: Path, flags: Sequence[str] = ()) -> Child:
    """The model SIMULATOR on loopback; returns once it answers."""
    child = spawn(f"modelsim-{port}", ["--port", str(port), *flags], log_dir, module=MODELSIM)
    wait_http(f"http://127.0.0.1:{port}/healthz", child)
    child.extra["base_url"] = f"http://127.0.0.1:{port}/v1"
    return child


def worker_env(
    bootstrap: str, base_url: str, app_id: str, api_key: str = "simulator", **settings: object
) -> dict[str, str]:
    """The environment of a worker: where Kafka and the model are, its consumer group, and
    any further setting by field name (`concurrency=50` -> LLMFLOW_CONCURRENCY=50)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": api_key,
        "LLMFLOW_APP_ID": app_id,
    }
    return env | {f"LLMFLOW_{name.upper()}": str(value) for name, value in settings.items()}


def start_worker(
    name: str,
    topologies: Sequence[Path | str],
    log_dir: Path,
    env: Mapping[str, str],
    extra_args: Sequence[str] = (),
    processes: int = 1,
) -> Child:
    """`llmflow worker`, one process unless told otherwise (the command's default is a
    process per core): what runs it here reasons about one worker per pid, whose outputs
    carry that pid, and whose kill -9 is a crash of that worker, not of a supervisor."""
    args = ["worker", "--processes", str(processes)]
    args += [a for t in topologies for a in ("--topology", str(t))]
    return spawn(name, [*args, *extra_args], log_dir, env)
