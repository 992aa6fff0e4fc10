"""`llmflow worker --processes N`: N single-process workers under one supervisor.

A worker runs its agents on one event loop, and with the model's answers parsed, the
records encoded and faust's bookkeeping done in Python, that loop keeps about one core
busy before the model is the limit. Threads would share one interpreter lock; several
faust apps cannot share a process. So a machine with more cores runs more processes, each
an ordinary worker (the same topologies and settings) joined to the same consumer group:
Kafka splits the partitions among them as it would among machines, and everything that
keeps events from being lost or paid twice holds unchanged, since it never depended on
which process an event went to.

Nothing is shared between the children: each has its own data folder (`<data_dir>/p<i>`),
its own static group id (`<instance_id>-<i>`) and its own HTTP port on loopback, and the
supervisor holds no state a child needs. It runs the start-up checks once, starts the
children, restarts one that dies (after 1 s, doubling to 30 s while it keeps dying young),
forwards SIGTERM/SIGINT and exits with the worst status of its children.

One `/metrics` for all: Prometheus' multiprocess mode shares counters through files but
takes no custom collector, and the consumer lag and the process metrics are collectors.
The supervisor reads each child's own `/metrics` at scrape time instead, labels every
sample with `process="<i>"` and serves the families merged; a child's series keep their
labels across its restarts (a counter reset, which `rate()` allows for).

A child must not outlive its supervisor (a SIGKILL skips every clean-up): it asks the
kernel for SIGKILL when its parent dies, and watches its parent besides (`follow_supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from llmflow.errors import ConfigError
from llmflow.services.broker.local import free_port
from llmflow.services.worker.health import serve
from llmflow.services.worker.settings import Settings

log = logging.getLogger(__name__)

# Set in a child's environment: the supervisor's pid, which the child ends with.
SUPERVISOR_PID_ENV = "LLMFLOW_SUPERVISOR_PID"
EXIT_CONFIG = 2  # a child's settings or topologies are wrong: restarting cannot help
STOP_GRACE_S = 15.0
"""How long past its drain timeout a stopping child may take before it is killed."""
SCRAPE_TIMEOUT_S = 5.0
PROCESS_LABEL = "process"


# --- what each child gets --------------------------------------------------------------------


def child_environment(
    environ: Mapping[str, str],
    settings: Settings,
    index: int,
    port: int | None,
    supervisor_pid: int,
) -> dict[str, str]:
    """The environment of child `index`: the supervisor's, with the settings that must differ
    per process (or that came from the command line) set explicitly."""
    own = {
        "LLMFLOW_PROCESSES": "1",
        "LLMFLOW_PREFLIGHT": "false",  # checked once, by the supervisor
        "LLMFLOW_APP_ID": settings.app_id,
        "LLMFLOW_CONCURRENCY": str(settings.concurrency),
        "LLMFLOW_DATA_DIR": str(settings.data_dir / f"p{index}"),
        "LLMFLOW_METRICS_HOST": "127.0.0.1",  # the supervisor alone serves outside
        SUPERVISOR_PID_ENV: str(supervisor_pid),
    }
    if settings.instance_id:
        own["LLMFLOW_INSTANCE_ID"] = f"{settings.instance_id}-{index}"
    if "worker_id" in settings.model_fields_set:  # else each child's own host:pid
        own["LLMFLOW_WORKER_ID"] = f"{settings.worker_id}-{index}"
    if port is not None:
        own["LLMFLOW_METRICS_PORT"] = str(port)
    # Settings read variable names in any case: a variable set here replaces every spelling.
    replaced = {*own, "LLMFLOW_METRICS_PORT"}
    return {n: v for n, v in environ.items() if n.upper() not in replaced} | own


def worker_command(topologies: Sequence[str | Path], loglevel: str) -> list[str]:
    """A child's command line: this interpreter running a single-process worker."""
    args = [sys.executable, "-m", "llmflow.services.cli", "worker", "--processes", "1"]
    args += ["--loglevel", loglevel]
    return args + [arg for path in topologies for arg in ("--topology", str(path))]


# --- restarts and exit statuses --------------------------------------------------------------


@dataclass
class Backoff:
    """Delay before a dead child is started again: `initial_s`, doubling up to `max_s` while
    it keeps dying; a child that ran `reset_after_s` starts the series again."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0
    _next_s: float = field(default=0.0, init=False)

    def after(self, ran_s: float) -> float:
        """The delay before the next start of a child that ran `ran_s` seconds."""
        if ran_s >= self.reset_after_s or not self._next_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(self._next_s * 2, self.max_s)
        return delay


def exit_status(returncode: int) -> int:
    """A process's status as a shell reports it: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def overall_status(statuses: Iterable[int]) -> int:
    """0 when every child exited 0, else the worst (highest) status: 75 for a drain that
    timed out, 70 for an event that escaped, 128 + N for a child killed by signal N."""
    return max(statuses, default=0)


# --- one /metrics for all --------------------------------------------------------------------


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_metrics(texts: Mapping[str, str], own: Iterable[Metric] = ()) -> bytes:
    """The Prometheus text of every child (process label -> its `/metrics`), each sample
    labelled `process="<label>"`, families of one name merged under one HELP and TYPE, then
    the supervisor's `own` families."""
    families: dict[str, Metric] = {}
    for process, text in texts.items():
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples += [
                sample._replace(labels=_with_process(sample.labels, process))
                for sample in family.samples
            ]
    for family in own:
        families.setdefault(family.name, family)
    return generate_latest(_Families(families.values()))


def _with_process(labels: Mapping[str, str], process: str) -> dict[str, str]:
    """`labels` plus the process; one of the same name is kept as `exported_process`, the
    way Prometheus keeps a target's label that its own would override."""
    labelled = dict(labels)
    if PROCESS_LABEL in labelled:
        labelled[f"exported_{PROCESS_LABEL}"] = labelled.pop(PROCESS_LABEL)
    labelled[PROCESS_LABEL] = process
    return labelled


# --- in a child ------------------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_CHECK_S = 1.0


def follow_supervisor(supervisor_pid: int) -> None:
    """End this process when the supervisor `supervisor_pid` is gone, even killed with
    SIGKILL: the kernel sends SIGKILL to this process when its parent dies (Linux), and a
    thread checks the parent every second besides (other systems, and a supervisor that died
    before the first request: the child was then adopted by another process already)."""
    _ask_parent_death_signal(signal.SIGKILL)
    if os.getppid() != supervisor_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    watch = threading.Thread(
        target=_watch_parent, args=(supervisor_pid,), name="supervisor-watch", daemon=True
    )
    watch.start()


def _ask_parent_death_signal(signum: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux: the parent check alone
        return
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG): %s", os.strerror(ctypes.get_errno()))


def _watch_parent(supervisor_pid: int) -> None:
    while os.getppid() == supervisor_pid:
        time.sleep(PARENT_CHECK_S)
    os.kill(os.getpid(), signal.SIGKILL)


# --- the supervisor --------------------------------------------------------------------------


@dataclass
class _Child:
    """One slot of the supervisor: the process running in it now, if any."""

    index: int
    process: asyncio.subprocess.Process | None = None
    port: int | None = None
    status: int = 0
    """The exit status of its last process (0 also for a stop it was asked for)."""
    restarts: int = 0


class Supervisor:
    """Runs `processes` children of `command`, keeps them running, stops them together."""

    def __init__(
        self,
        settings: Settings,
        command: Sequence[str],
        processes: int,
        *,
        backoff: Callable[[], Backoff] = Backoff,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.command = list(command)
        self.children = [_Child(index) for index in range(processes)]
        self._backoff = backoff
        self._environ = dict(os.environ if environ is None else environ)
        self._stop_signal: int | None = None
        self._stopping = asyncio.Event()
        self._config_error = False
        self._session: aiohttp.ClientSession | None = None
        self._deadline: asyncio.TimerHandle | None = None

    @property
    def running(self) -> int:
        return sum(1 for child in self.children if child.process is not None)

    async def run(self) -> int:
        """Until every child has stopped; returns the supervisor's exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signum)
        log.warning(
            "worker supervisor (pid %d): %d worker processes", os.getpid(), len(self.children)
        )
        runner = None
        try:
            if self.settings.metrics_port is not None:
                self._session = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
                )
                runner = await self._serve(self.settings.metrics_host, self.settings.metrics_port)
            await asyncio.gather(*(self._keep_running(child) for child in self.children))
        finally:
            self._kill_all()  # after an error of the supervisor's own; else none is left
            if self._deadline is not None:
                self._deadline.cancel()
            if runner is not None:
                await runner.cleanup()
            if self._session is not None:
                await self._session.close()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        if self._config_error:
            return EXIT_CONFIG
        return overall_status(child.status for child in self.children)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward `signum` to every child and start no more; each drains its events in
        flight (LLMFLOW_DRAIN_TIMEOUT_S), and one still running well past that is killed."""
        if self._stop_signal is None:
            log.warning(
                "worker supervisor: %s, stopping %d worker processes",
                signal.Signals(signum).name,
                self.running,
            )
            self._stop_signal = signum
            self._stopping.set()
            deadline = self.settings.drain_timeout_s + STOP_GRACE_S
            self._deadline = asyncio.get_running_loop().call_later(
                deadline, self._kill_all, deadline
            )
        for child in self.children:
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signum)

    def _kill_all(self, after_s: float | None = None) -> None:
        for child in self.children:
            process = child.process
            if process is not None and process.returncode is None:
                if after_s is not None:
                    log.error(
                        "worker process %d (pid %d) still running %g s after the stop: killing it",
                        child.index,
                        process.pid,
                        after_s,
                    )
                process.kill()

    async def _keep_running(self, child: _Child) -> None:
        backoff = self._backoff()
        while not self._stopping.is_set():
            child.port = free_port() if self.settings.metrics_port is not None else None
            env = child_environment(
                self._environ, self.settings, child.index, child.port, os.getpid()
            )
            # Its own process group: a Ctrl-C in a terminal reaches the supervisor alone,
            # which passes it on once.
            process = await asyncio.create_subprocess_exec(*self.command, env=env, process_group=0)
            child.process = process
            started = time.monotonic()
            if self._stop_signal is not None:  # stopped while it was being started
                process.send_signal(self._stop_signal)
            returncode = await process.wait()
            child.process = None
            child.status = exit_status(returncode)
            if self._stop_signal is not None:
                if returncode == -self._stop_signal:
                    child.status = 0  # ended by the signal passed on: still starting up
                return
            if returncode == EXIT_CONFIG:
                log.error(
                    "worker process %d (pid %d) exited with status %d (configuration): "
                    "stopping the others",
                    child.index,
                    process.pid,
                    returncode,
                )
                self._config_error = True
                self.stop()
                return
            delay = backoff.after(time.monotonic() - started)
            child.restarts += 1
            log.warning(
                "worker process %d (pid %d) %s; restarting it in %g s",
                child.index,
                process.pid,
                describe(returncode),
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    # --- HTTP ---------------------------------------------------------------------------------

    async def _serve(self, host: str, port: int) -> web.AppRunner:
        try:
            return await serve(self.http_app(), host, port)
        except OSError as exc:  # before any child started: one line, exit 2
            raise ConfigError(f"LLMFLOW_METRICS_PORT={port}: {exc.strerror or exc}") from exc

    def own_metrics(self) -> list[Metric]:
        processes = GaugeMetricFamily(
            "llmflow_worker_processes", "Worker processes running under the supervisor."
        )
        processes.add_metric([], self.running)
        restarts = CounterMetricFamily(
            "llmflow_worker_restarts",
            "Worker processes the supervisor started again after they died.",
            labels=[PROCESS_LABEL],
        )
        for child in self.children:
            restarts.add_metric([str(child.index)], child.restarts)
        return [processes, restarts]

    async def _get(self, child: _Child, path: str) -> tuple[int, str]:
        """A child's answer on `path`; (0, why) when it is not running or does not answer."""
        if child.process is None or child.port is None or self._session is None:
            return 0, "not running (restarting)"
        try:
            async with self._session.get(f"http://127.0.0.1:{child.port}{path}") as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return 0, f"{path} did not answer: {why}"

    async def _ask_all(self, path: str) -> list[tuple[_Child, int, str]]:
        answers = await asyncio.gather(*(self._get(child, path) for child in self.children))
        return [(child, *answer) for child, answer in zip(self.children, answers, strict=True)]

    def http_app(self) -> web.Application:
        """`/metrics` of every child merged, `/healthz` and `/readyz` when every child says so
        (the reasons of those that do not, one a line, prefixed with their process)."""

        async def metrics(request: web.Request) -> web.Response:
            texts = {
                str(child.index): text
                for child, status, text in await self._ask_all("/metrics")
                if status == 200
            }
            body = merge_metrics(texts, self.own_metrics())
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def all_say(path: str, good: str) -> web.Response:
            reasons = [
                f"process {child.index}: {line}"
                for child, status, text in await self._ask_all(path)
                if status != 200
                for line in (text.strip().splitlines() or [f"{path} answered {status}"])
            ]
            if reasons:
                return web.Response(status=503, text="".join(f"{r}\n" for r in reasons))
            return web.Response(text=good)

        async def healthz(request: web.Request) -> web.Response:
            return await all_say("/healthz", "ok\n")

        async def readyz(request: web.Request) -> web.Response:
            return await all_say("/readyz", "ready\n")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        return app


def supervise(settings: Settings, topologies: Sequence[str | Path], loglevel: str) -> int:
    """Run `settings.processes` workers of `topologies` until stopped; the exit status."""
    command = worker_command(topologies, loglevel)
    return asyncio.run(Supervisor(settings, command, settings.processes).run())
