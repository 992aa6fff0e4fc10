"""The processes a chaos scenario runs and breaks: the broker, the SIMULATOR, the workers.

Each can be killed with SIGKILL and started again where it was: the local broker on its data
folder (same ports, same records), the SIMULATOR on its port, a worker with its name, state
folder, environment and metrics port. A sampler thread reads numbers off them every so often
(resident memory, a metrics gauge).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import urllib.error
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dev import launch
from dev.bench.harness import WorkerGroup, wait_settled
from dev.launch import Child, start_modelsim, start_worker
from dev.probes import simulator_log, simulator_stats
from llmflow.errors import LlmflowError
from llmflow.services.broker.local import LocalKafka, free_port

log = logging.getLogger(__name__)


class ChaosError(LlmflowError):
    """A chaos scenario could not run to its end (a process would not start, ...)."""


# --- broker ----------------------------------------------------------------------------------


@dataclass
class Broker:
    """The run's Kafka: a local broker the suite may kill and restart, or a cluster named by
    KAFKA_BOOTSTRAP_SERVERS (which it leaves alone)."""

    bootstrap: str
    local: LocalKafka | None = None

    @property
    def pid(self) -> int | None:
        process = self.local.process if self.local else None
        return process.pid if process is not None else None

    def kill(self) -> None:
        """SIGKILL the local broker: no clean shutdown, its data folder as a crash leaves it."""
        if self.local is None or self.local.process is None:
            raise ChaosError("only the local broker can be killed")
        self.local.process.kill()
        self.local.process.wait()

    def restart(self, timeout_s: float = 120.0) -> float:
        """Start the local broker again on its data folder (same ports); returns seconds
        until it serves metadata."""
        if self.local is None:
            raise ChaosError("only the local broker can be restarted")
        began = time.monotonic()
        self.local.start(timeout_s)
        return time.monotonic() - began


@contextlib.contextmanager
def broker(run_dir: Path) -> Iterator[Broker]:
    """KAFKA_BOOTSTRAP_SERVERS when set, else one local broker for the whole run."""
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield Broker(servers)
        return
    with LocalKafka(run_dir / "kafka") as local:
        yield Broker(local.bootstrap_servers, local)


# --- simulator -------------------------------------------------------------------------------

MODEL_PATHS = ("/v1/chat/completions", "/v1/embeddings")


@dataclass
class RequestLog:
    """The SIMULATOR's request log, gathered on this side so it survives a simulator restart
    and outgrows the simulator's own bounded log.

    `collect` merges the entries it has not seen: entries are appended in time order, so
    everything after the last one kept is new (ties on the same timestamp are told apart
    by their content)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    missed: int = 0
    """Requests the simulator logged that were gone from its log before they were read."""
    _last_t: float = 0.0
    _at_last: set[tuple[Any, ...]] = field(default_factory=set)
    _counted: int = 0
    """The simulator's own total at the last collect (per incarnation)."""

    @staticmethod
    def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
        return (entry["t"], entry["received"], entry["call_id"], entry["status"], entry["path"])

    def merge(self, entries: Sequence[dict[str, Any]], total: int | None = None) -> int:
        """Keep the entries newer than those kept so far; returns how many were new.
        `total` (the simulator's count of logged requests, read just before) finds losses."""
        new = [
            e
            for e in entries
            if e["t"] > self._last_t
            or (e["t"] == self._last_t and self._key(e) not in self._at_last)
        ]
        if new:
            last_t = max(e["t"] for e in new)
            keys = {self._key(e) for e in new if e["t"] == last_t}
            self._at_last = keys | (self._at_last if last_t == self._last_t else set())
            self._last_t = last_t
        self.entries.extend(new)
        if total is not None:
            self.missed += max(0, total - self._counted - len(new))
            self._counted = total
        return len(new)

    def restarted(self) -> None:
        """The simulator started afresh: its totals count from 0 again."""
        self._counted = 0

    def pending(self, total: int) -> int:
        """Requests logged by the simulator since the last collect."""
        return total - self._counted

    def paid_twice(self) -> int:
        """Answers paid for a call id that already had one: every successful, valid answer
        after the first, per call id (a schema repair follows an invalid answer and is the
        first valid one, so it does not count)."""
        answered: dict[str, int] = {}
        for entry in self.entries:
            call_id = entry.get("call_id")
            if call_id and entry.get("ok") and not entry.get("invalid"):
                answered[call_id] = answered.get(call_id, 0) + 1
        return sum(n - 1 for n in answered.values() if n > 1)

    def model_requests(self) -> int:
        return sum(1 for e in self.entries if e.get("path") in MODEL_PATHS)


class Simulator:
    """The model SIMULATOR on a port of its own, restartable there after a SIGKILL.

    A thread collects its request log before the simulator's bounded log could wrap
    (checking its cheap `/sim/stats` every `poll_s`), and `kill` collects it first."""

    COLLECT_AFTER = 40_000  # well under the simulator's 100,000 kept entries

    def __init__(self, log_dir: Path, flags: Sequence[str], poll_s: float = 2.0) -> None:
        self.log_dir = log_dir
        self.flags = list(flags)
        self.port = free_port()
        self.requests = RequestLog()
        self._lock = threading.Lock()
        self.child: Child | None = start_modelsim(self.port, log_dir, self.flags)
        self.base_url = self.child.extra["base_url"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(poll_s,), daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child is not None else None

    def collect(self) -> None:
        """Read the simulator's log now and keep its new entries."""
        with self._lock:
            if self.child is None or not self.child.alive():
                return
            try:
                stats = simulator_stats(self.base_url)
                # Endpoint probes (`GET /models`) are left out of the log, so out of the total.
                total = int(stats["total"]) - int(stats["by_path"].get("/v1/models", 0))
                self.requests.merge(simulator_log(self.base_url), total)
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                log.warning("could not read the simulator's request log: %s", exc)

    def _poll(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            with self._lock:
                child = self.child
            if child is None or not child.alive():
                continue
            try:
                stats = simulator_stats(self.base_url)
                # Endpoint probes (`GET /models`) are left out of the log, so out of the total.
                total = int(stats["total"]) - int(stats["by_path"].get("/v1/models", 0))
            except (urllib.error.URLError, OSError, ValueError, KeyError):
                continue
            if self.requests.pending(total) >= self.COLLECT_AFTER:
                self.collect()

    def kill(self) -> None:
        """Collect the log, then SIGKILL (requests answered in between are not counted)."""
        self.collect()
        with self._lock:
            if self.child is not None:
                self.child.kill()
            self.child = None

    def restart(self) -> float:
        """Start again on the same port; returns seconds until it answered."""
        began = time.monotonic()
        with self._lock:
            self.child = start_modelsim(self.port, self.log_dir, self.flags)
            self.requests.restarted()
        return time.monotonic() - began

    def stop(self) -> None:
        self.collect()
        self._stop.set()
        self._thread.join()
        with self._lock:
            if self.child is not None:
                self.child.stop()
            self.child = None


# --- workers ---------------------------------------------------------------------------------


@dataclass
class Worker:
    """One `llmflow worker` of the group; a restart keeps its name, state and metrics port."""

    name: str
    env: dict[str, str]
    metrics_port: int
    child: Child
    restarts: int = 0

    @property
    def pid(self) -> int:
        return self.child.pid


class Workers:
    """`llmflow worker` processes in one consumer group, started, killed and restarted.

    A worker that dies unplanned is noted (`deaths`) and started again by `revive`, so a
    scenario can still count what became of every event."""

    def __init__(
        self,
        run_dir: Path,
        label: str,
        bootstrap: str,
        sim: Simulator,
        topologies: Sequence[Path],
        **settings: object,
    ) -> None:
        self.run_dir = run_dir
        self.label = label
        self.topologies = list(topologies)
        self.app_id = f"chaos-{label}-{uuid.uuid4().hex[:6]}"
        self.base_env = launch.worker_env(
            bootstrap, sim.base_url, self.app_id, "simulator", **settings
        )
        self.all: list[Worker] = []
        self.running: list[Worker] = []
        self.deaths: list[str] = []

    def _spawn(self, name: str, env: dict[str, str]) -> Child:
        loglevel = os.environ.get("LLMFLOW_CHAOS_WORKER_LOGLEVEL", "warn")
        return start_worker(
            name, self.topologies, self.run_dir / "logs", env, ["--loglevel", loglevel]
        )

    def start(self) -> Worker:
        name = f"{self.label}-worker{len(self.all) + 1}"
        port = free_port()
        env = self.base_env | {
            "LLMFLOW_DATA_DIR": str(self.run_dir / "state" / name),
            "LLMFLOW_METRICS_PORT": str(port),
        }
        worker = Worker(name, env, port, self._spawn(name, env))
        self.all.append(worker)
        self.running.append(worker)
        return worker

    def kill(self, worker: Worker) -> None:
        worker.child.kill()

    def restart(self, worker: Worker) -> None:
        """Start a killed (or dead) worker again with everything it had."""
        worker.child = self._spawn(worker.name, worker.env)
        worker.restarts += 1
        if worker not in self.running:
            self.running.append(worker)

    def stop(self, worker: Worker) -> None:
        """SIGTERM: the worker leaves the group cleanly."""
        worker.child.stop()
        self.running.remove(worker)

    def revive(self) -> list[str]:
        """Restart every running worker that died; returns what happened to each."""
        found = []
        for worker in self.running:
            if not worker.child.alive():
                what = f"{worker.name} exited with {worker.child.process.returncode}"
                found.append(what)
                self.deaths.append(what)
                log.warning("%s; restarting it:\n%s", what, worker.child.log_tail(2000))
                self.restart(worker)
        return found

    async def settled(self, timeout_s: float = 120.0) -> float:
        """Until the running workers own every input partition between them."""
        group = WorkerGroup([w.child for w in self.running], [w.metrics_port for w in self.running])
        return await wait_settled(group, timeout_s)

    def stop_all(self) -> None:
        threads = [threading.Thread(target=w.child.stop) for w in self.running]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.running.clear()

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {w.name}\n{w.child.log_tail(chars)}" for w in self.all)


# --- sampling --------------------------------------------------------------------------------


class Sampler:
    """Reads each named probe every `interval_s` in a thread: series of (time, value).

    A probe returns None when there is nothing to read (a process gone, a port not up)."""

    def __init__(self, probes: dict[str, Callable[[], float | None]], interval_s: float) -> None:
        self.probes = probes
        self.interval_s = interval_s
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in probes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for name, probe in self.probes.items():
                try:
                    value = probe()
                except (OSError, ValueError):
                    value = None
                if value is not None:
                    self.series[name].append((now, float(value)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, name: str, t: float) -> float | None:
        """The sample of `name` nearest to time `t`."""
        series = self.series[name]
        if not series:
            return None
        return min(series, key=lambda point: abs(point[0] - t))[1]

    def peak(self, name: str) -> float | None:
        return max((v for _, v in self.series[name]), default=None)

    def last(self, name: str) -> float | None:
        return self.series[name][-1][1] if self.series[name] else None
