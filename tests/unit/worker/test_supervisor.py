"""`llmflow worker --processes N`: what each child gets, restarts with backoff, the exit
status, one `/metrics` for all, and children that end with their supervisor. The children
here are small stand-ins (no Kafka): they serve a worker's HTTP routes and exit as told."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dev.bench.harness import process_gone
from llmflow.errors import ConfigError
from llmflow.services.broker.local import free_port
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.settings import Settings
from llmflow.services.worker.supervisor import (
    SUPERVISOR_PID_ENV,
    Backoff,
    Supervisor,
    child_environment,
    describe,
    exit_status,
    merge_metrics,
    overall_status,
)
from tests.unit.worker.test_metric_names import _promtool

# --- metrics ---------------------------------------------------------------------------------


def _worker_text(events: int, seconds: float) -> str:
    metrics = Metrics()
    metrics.events_in.labels("support_triage").inc(events)
    metrics.event_seconds.labels("support_triage").observe(seconds)
    metrics.quota_share.set(0.5)
    return generate_latest(metrics.registry).decode()


def test_merged_metrics_label_every_sample_and_keep_one_family_per_name() -> None:
    merged = merge_metrics({"0": _worker_text(3, 0.3), "1": _worker_text(5, 7.0)}).decode()

    types = re.findall(r"^# TYPE (\S+) ", merged, re.M)
    helps = re.findall(r"^# HELP (\S+) ", merged, re.M)
    assert len(types) == len(set(types)) and sorted(types) == sorted(helps)
    assert "llmflow_events_in_total counter" in merged  # not `_total_total`
    assert "_total_total" not in merged
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(merged)
        for s in family.samples
    }
    assert all(dict(labels).get("process") in {"0", "1"} for _, labels in samples)
    events = "llmflow_events_in_total"
    assert samples[events, (("process", "0"), ("topology", "support_triage"))] == 3
    assert samples[events, (("process", "1"), ("topology", "support_triage"))] == 5
    assert samples["llmflow_quota_share_ratio", (("process", "1"),)] == 0.5
    # Each child's histogram stays whole: its buckets, count and sum under its label.
    for process, slow in (("0", 0.0), ("1", 1.0)):
        of = {
            (name, dict(labels).get("le")): value
            for (name, labels), value in samples.items()
            if name.startswith("llmflow_event_seconds_") and dict(labels)["process"] == process
        }
        assert of["llmflow_event_seconds_count", None] == 1
        assert of["llmflow_event_seconds_bucket", "+Inf"] == 1
        assert of["llmflow_event_seconds_bucket", "5.0"] == 1 - slow
    # The sample lines of a family follow its TYPE line, none elsewhere.
    family = ""
    for line in merged.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
        elif not line.startswith("#"):
            assert line.startswith(family), (family, line)


def test_a_label_named_process_is_kept_as_exported_process() -> None:
    text = '# TYPE jobs gauge\njobs{process="etl"} 2.0\n'
    (family,) = text_string_to_metric_families(merge_metrics({"1": text}).decode())
    assert family.samples[0].labels == {"exported_process": "etl", "process": "1"}


@pytest.mark.skipif(_promtool() is None, reason="promtool is not installed")
def test_promtool_finds_nothing_in_the_merged_metrics() -> None:
    merged = merge_metrics({"0": _worker_text(1, 0.1), "1": _worker_text(2, 0.2)})
    done = subprocess.run(
        [str(_promtool()), "check", "metrics"], input=merged, capture_output=True, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


# --- backoff and exit status -----------------------------------------------------------------


def test_backoff_doubles_to_its_ceiling_and_starts_over_after_a_long_run() -> None:
    backoff = Backoff()
    assert [backoff.after(2.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after(61.0) == 1  # it ran a minute: a new failure, not the same one
    assert backoff.after(0.5) == 2


def test_the_exit_status_is_the_worst_of_the_children() -> None:
    assert overall_status([0, 0]) == 0
    assert overall_status([0, 75]) == 75
    assert overall_status([70, 75, 0]) == 75
    assert exit_status(-signal.SIGKILL) == 137
    assert overall_status([exit_status(-signal.SIGKILL), 75]) == 137
    assert describe(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe(70) == "exited with status 70"


# --- what a child gets -----------------------------------------------------------------------


def _as_read_by_a_child(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("LLMFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_each_child_gets_its_own_state_id_and_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {
        "LLMFLOW_INSTANCE_ID": "pod-7",
        "LLMFLOW_METRICS_PORT": "9100",
        "llmflow_data_dir": "/elsewhere",  # read too, in any case: replaced
        "PATH": "/bin",
    }
    settings = Settings(
        app_id="from-the-flag",
        concurrency=7,
        processes=4,
        instance_id="pod-7",
        data_dir=tmp_path,
        metrics_port=9100,
        metrics_host="0.0.0.0",
    )
    env = child_environment(environ, settings, 2, 41234, supervisor_pid=99)
    assert env["PATH"] == "/bin" and env[SUPERVISOR_PID_ENV] == "99"
    assert "llmflow_data_dir" not in env
    child = _as_read_by_a_child(env, monkeypatch)
    assert child.processes == 1 and not child.preflight
    assert (child.app_id, child.concurrency) == ("from-the-flag", 7)
    assert child.instance_id == "pod-7-2"
    assert child.data_dir == tmp_path / "p2"
    assert (child.metrics_host, child.metrics_port) == ("127.0.0.1", 41234)
    assert child.worker_id.endswith(f":{os.getpid()}")  # its own host:pid, as unsupervised


def test_without_metrics_or_static_membership_a_child_has_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(processes=2, data_dir=tmp_path, worker_id="edge")
    env = child_environment({}, settings, 0, None, supervisor_pid=99)
    child = _as_read_by_a_child(env, monkeypatch)
    assert child.metrics_port is None and child.instance_id is None
    assert child.worker_id == "edge-0"


# --- the supervisor with stand-in children ---------------------------------------------------

# A stand-in worker: its N-th start exits with `exits[N]` while there are any, then it serves
# a worker's routes (when given a port) until SIGTERM, and exits with `on_stop`.
STAND_IN = r"""
import asyncio, json, os, signal, sys
from pathlib import Path
from llmflow.services.worker.health import Readiness, health_app, serve
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.supervisor import SUPERVISOR_PID_ENV, follow_supervisor

follow_supervisor(int(os.environ[SUPERVISOR_PID_ENV]))
data = Path(os.environ["LLMFLOW_DATA_DIR"])
runs = data.parent / f"{data.name}.runs"
started = int(runs.read_text()) if runs.exists() else 0
runs.write_text(str(started + 1))
exits = json.loads(sys.argv[1]).get(data.name, [])
if started < len(exits):
    sys.exit(exits[started])

async def main() -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    metrics = Metrics()
    metrics.events_in.labels("t").inc(started + 1)
    runner = None
    if port := os.environ.get("LLMFLOW_METRICS_PORT"):
        runner = await serve(health_app(metrics.registry, Readiness()), "127.0.0.1", int(port))
    (data.parent / f"{data.name}.up").write_text(str(os.getpid()))
    await stop.wait()
    if runner is not None:
        await runner.cleanup()
    return int(json.loads(sys.argv[2]).get(data.name, 0))

sys.exit(asyncio.run(main()))
"""


def _supervisor(
    tmp_path: Path,
    exits: dict[str, list[int]],
    on_stop: dict[str, int] | None = None,
    *,
    metrics_port: int | None = None,
    backoff_s: float = 0.05,
) -> Supervisor:
    settings = Settings(data_dir=tmp_path, metrics_port=metrics_port, drain_timeout_s=5)
    command = [sys.executable, "-c", STAND_IN, json.dumps(exits), json.dumps(on_stop or {})]
    return Supervisor(settings, command, 2, backoff=lambda: Backoff(initial_s=backoff_s))


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def _up(tmp_path: Path, *names: str) -> Callable[[], bool]:
    return lambda: all((tmp_path / f"{name}.up").exists() for name in names)


async def test_a_dead_child_is_started_again_and_the_worst_stop_status_wins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "llmflow.services.worker.supervisor")
    supervisor = _supervisor(tmp_path, {"p0": [70, 1]}, {"p1": 75})
    running = asyncio.create_task(supervisor.run())
    await _until(_up(tmp_path, "p0", "p1"))
    assert (tmp_path / "p0.runs").read_text() == "3"
    assert [child.restarts for child in supervisor.children] == [2, 0]
    restarts = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert len(restarts) == 2
    assert re.fullmatch(
        r"worker process 0 \(pid \d+\) exited with status 70; restarting it in 0.05 s",
        restarts[0],
    )
    assert "exited with status 1; restarting it in 0.1 s" in restarts[1]
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 75


async def test_a_metrics_port_in_use_is_a_configuration_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        supervisor = _supervisor(tmp_path, {}, metrics_port=port)
        with pytest.raises(ConfigError, match=f"LLMFLOW_METRICS_PORT={port}: "):
            await supervisor.run()
    assert all(child.port is None for child in supervisor.children)  # none was started


async def test_a_configuration_error_stops_every_child_without_restarts(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, {"p1": [2]})
    assert await asyncio.wait_for(supervisor.run(), 30) == 2
    assert (tmp_path / "p1.runs").read_text() == "1"
    assert supervisor.running == 0


async def _get(url: str) -> tuple[int, str]:
    async with ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_one_port_serves_every_childs_metrics_and_health(tmp_path: Path) -> None:
    port = free_port()
    supervisor = _supervisor(tmp_path, {}, metrics_port=port, backoff_s=30)
    running = asyncio.create_task(supervisor.run())
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        try:
            return (await _get(f"{url}/healthz"))[0] == 200
        except OSError:
            return False

    deadline = time.monotonic() + 30
    while not await healthy():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert await _get(f"{url}/readyz") == (200, "ready\n")
    status, text = await _get(f"{url}/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for process in ("0", "1"):
        assert samples["llmflow_events_in_total", (("process", process), ("topology", "t"))] == 1
        assert samples["llmflow_worker_restarts_total", (("process", process),)] == 0
    assert samples["llmflow_worker_processes", ()] == 2

    # A child killed: not healthy until it is back (30 s away), counted as restarted.
    victim = int((tmp_path / "p0.up").read_text())
    os.kill(victim, signal.SIGKILL)
    await _until(lambda: supervisor.running == 1)
    status, text = await _get(f"{url}/healthz")
    assert (status, text) == (503, "process 0: not running (restarting)\n")
    assert (await _get(f"{url}/readyz"))[0] == 503
    text = (await _get(f"{url}/metrics"))[1]
    assert "llmflow_worker_processes 1.0" in text
    assert 'llmflow_worker_restarts_total{process="0"} 1.0' in text
    assert 'process="0"' not in text.replace('llmflow_worker_restarts_total{process="0"}', "")
    supervisor.stop()
    # Stopped while waiting to restart it: the killed child's status is the last it had.
    assert await asyncio.wait_for(running, 30) == 128 + signal.SIGKILL


# A parent that starts a child following it (as a worker of the supervisor does), prints
# the child's pid and waits to be killed.
PARENT = r"""
import os, subprocess, sys, time
child = '''
import os, sys, time
from llmflow.services.worker.supervisor import SUPERVISOR_PID_ENV, follow_supervisor
follow_supervisor(int(os.environ[SUPERVISOR_PID_ENV]))
print("following", flush=True)
time.sleep(120)
'''
env = {**os.environ, "LLMFLOW_SUPERVISOR_PID": str(os.getpid())}
process = subprocess.Popen([sys.executable, "-c", child], env=env, stdout=sys.stdout)
print(process.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_ends_with_its_supervisor_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        lines = {parent.stdout.readline().strip() for _ in range(2)}
        assert "following" in lines, lines
        (child,) = (int(line) for line in lines if line.isdigit())
        parent.kill()  # SIGKILL: the supervisor cleans nothing up
        parent.wait()
        deadline = time.monotonic() + 5
        while not process_gone(child):
            assert time.monotonic() < deadline, f"child {child} outlived its supervisor"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
