"""Building blocks of the worker benchmarks: processes, topics, events, clocks and profiles.

Everything a scenario in `dev.bench.worker_scenarios` needs besides its own logic:

- per-run topology copies with unique topics (optionally trimmed to some calls);
- pre-encoded text events, produced round-robin over the partitions with aiokafka;
- outputs read back with aiokafka and reduced to the timestamps the rates are computed from;
- a sampler thread that reads CPU seconds and peak memory of the child processes from /proc
  (plus the machine's busy share from /proc/stat), so CPU can be taken over any time window;
- starting workers, waiting until their consumer group is settled, stopping them;
- starting the lean hand-written consumer of `dev.bench.lean`, the worker's fair baseline;
- py-spy profiles reduced to CPU shares by library, and a verdict on what bounds a run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from dev import PROJECT_ROOT, launch
from dev.launch import Child, start_modelsim, start_worker
from dev.samples import TICKETS
from dev.topologies import copy_topology
from llmflow.errors import LlmflowError
from llmflow.services.broker.local import free_port
from llmflow.services.broker.topics import ensure_topics
from llmflow.services.orgdata.publish import LoadReport
from llmflow.services.sdk import text_event
from llmflow.services.worker.orgdata import publish_samples
from llmflow.services.worker.settings import Settings

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The sample org data holds customers C-1001 .. C-1024: every event finds its record.
CUSTOMERS = 24


class BenchError(LlmflowError):
    """A benchmark run could not complete (a child died, nothing arrived, ...)."""


# --- /proc ---------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the ")" closing the command name start at field 3; utime, stime are 14, 15.
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / CLK_TCK


def proc_status_kib(pid: int, name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status such as VmHWM (peak RSS) or VmRSS."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return None


def proc_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and every process below it (a supervisor and its workers):
    its own utime + stime, its children's that have exited and been waited for (cutime +
    cstime: a restarted worker's CPU is not lost), and the same of each child still running.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14 to 17.
    own = sum(int(value) for value in fields[11:15]) / CLK_TCK
    below = 0.0
    for child in child_pids(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):  # gone meanwhile
            below += proc_tree_cpu_s(child)
    return own + below


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a supervisor's workers), from /proc: the
    `children` file of each of its threads, else (a kernel without it) every process's
    parent."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if tasks:
        found = set()
        for task in tasks:
            with contextlib.suppress(OSError):
                found |= {int(child) for child in task.read_text().split()}
        return sorted(found)
    parents = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if parent == pid:
            parents.append(int(stat.parent.name))
    return sorted(parents)


def tree_hwm_kib(pid: int) -> int | None:
    """Peak resident memory (VmHWM) summed over a process and those below it: an upper
    bound of the tree's peak, since each peaked on its own time."""
    own = proc_status_kib(pid, "VmHWM")
    if own is None:
        return None
    return own + sum(tree_hwm_kib(child) or 0 for child in child_pids(pid))


def process_gone(pid: int) -> bool:
    """No such process, or one that has exited and waits to be reaped (a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def machine_cpu_s() -> tuple[float, float]:
    """(busy, busy + idle) CPU seconds of all cores since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


@dataclass(frozen=True, slots=True)
class _Sample:
    t: float
    cpu: dict[str, float]
    busy: float
    total: float


class CpuSampler:
    """Samples CPU seconds of named processes (and of the machine) every `interval_s`.

    Times are wall-clock (`time.time()`), the clock of the outputs' `produced_at`, so the
    CPU of any window measured from outputs can be interpolated afterwards. Peak resident
    memory (VmHWM) is kept per process, so it survives the process being stopped. A process
    watched as a `tree` (a supervisor) counts with every process below it.
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self._pids: dict[str, int] = {}
        self._trees: set[str] = set()
        self._samples: list[_Sample] = []
        self._last: dict[str, float] = {}
        self.peak_kib: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def watch(self, name: str, pid: int, *, tree: bool = False) -> None:
        with self._lock:
            self._pids[name] = pid
            if tree:
                self._trees.add(name)
            with contextlib.suppress(OSError):
                self._last[name] = self._cpu_s(name, pid)

    def _cpu_s(self, name: str, pid: int) -> float:
        return proc_tree_cpu_s(pid) if name in self._trees else proc_cpu_s(pid)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._pids)

    def sample(self) -> None:
        with self._lock:
            pids = dict(self._pids)
        cpu: dict[str, float] = {}
        for name, pid in pids.items():
            try:
                cpu[name] = self._cpu_s(name, pid)
            except (OSError, IndexError, ValueError):  # gone: keep its last reading
                cpu[name] = self._last.get(name, 0.0)
            self._last[name] = cpu[name]
            hwm = tree_hwm_kib(pid) if name in self._trees else proc_status_kib(pid, "VmHWM")
            if hwm is not None:
                self.peak_kib[name] = max(hwm, self.peak_kib.get(name, 0))
        busy, total = machine_cpu_s()
        with self._lock:
            self._samples.append(_Sample(time.time(), cpu, busy, total))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> CpuSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _at(self, t: float, value: Any) -> float:
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return math.nan
        times = [s.t for s in samples]
        i = bisect.bisect_left(times, t)
        if i == 0:
            return float(value(samples[0]))
        if i >= len(samples):
            return float(value(samples[-1]))
        a, b = samples[i - 1], samples[i]
        share = (t - a.t) / (b.t - a.t) if b.t > a.t else 0.0
        return float(value(a) + (value(b) - value(a)) * share)

    def cpu_s(self, name: str, start: float, end: float) -> float:
        """CPU seconds `name` used between two wall-clock times (interpolated)."""

        def of(s: _Sample) -> float:
            return s.cpu.get(name, 0.0)

        return self._at(end, of) - self._at(start, of)

    def cores(self, name: str, start: float, end: float) -> float:
        """Average cores `name` kept busy between two times (1.0 = one core all the time)."""
        return self.cpu_s(name, start, end) / (end - start) if end > start else math.nan

    def foreign_cores(self, start: float, end: float) -> float:
        """Cores kept busy by processes not watched here (other jobs on a shared machine):
        a run disturbed by them shows it here rather than as a slower system."""
        busy = self.machine_share(start, end) * (os.cpu_count() or 1)
        return busy - sum(self.cores(name, start, end) for name in self.names())

    def machine_share(self, start: float, end: float) -> float:
        """Busy share of all the machine's cores between two times (1.0 = all saturated)."""
        busy = self._at(end, lambda s: s.busy) - self._at(start, lambda s: s.busy)
        total = self._at(end, lambda s: s.total) - self._at(start, lambda s: s.total)
        return busy / total if total > 0 else math.nan


# --- topologies, topics, org data, events ---------------------------------------------------


@dataclass(frozen=True)
class TopologyCopy:
    """A shipped topology written into the run folder with topics unique to one run."""

    path: Path
    name: str
    input_topic: str
    output_topic: str
    dead_letter_topic: str
    parked_topic: str
    calls: tuple[str, ...]

    @property
    def topics(self) -> list[str]:
        return [self.input_topic, self.output_topic, self.dead_letter_topic, self.parked_topic]


def topology_copy(
    run_dir: Path,
    tag: str,
    *,
    name: str = "support_triage",
    keep: Sequence[str] = (),
    independent: bool = False,
) -> TopologyCopy:
    """Copy `topologies/<name>.yaml` with topics suffixed by `tag` and a random part;
    with `keep`, only the named calls stay; with `independent`, none needs another."""
    suffix = f"{tag}-{uuid.uuid4().hex[:6]}"
    try:
        copy = copy_topology(
            name, run_dir / "topologies" / suffix, suffix, keep=keep, independent=independent
        )
    except LlmflowError as exc:
        raise BenchError(str(exc)) from exc
    topology = copy.topology
    return TopologyCopy(
        path=copy.path,
        name=topology.name,
        input_topic=topology.input_topic,
        output_topic=topology.output_topic,
        dead_letter_topic=topology.dead_letter_topic,
        parked_topic=topology.parked,
        calls=tuple(call.name for call in topology.calls),
    )


def create_topics(bootstrap: str, topology: TopologyCopy, partitions: int) -> None:
    """All four topics of the copy with `partitions` each, before any worker runs."""
    names = topology.topics
    wrong: dict[str, int] = {}
    for _ in range(50):  # metadata of a topic created a moment ago may list no partitions yet
        counts = ensure_topics(bootstrap, names, partitions)
        wrong = {name: n for name, n in counts.items() if n != partitions}
        if not wrong:
            return
        if any(n > 0 for n in wrong.values()):
            break
        time.sleep(0.2)
    raise BenchError(f"topics exist with other partition counts: {wrong}")


def publish_org_samples(bootstrap: str, sim: Child) -> list[LoadReport]:
    """Publish the sample org data to its compacted topics (`llmflow.orgdata.<table>`), the
    policies' passages embedded by `sim`. Every worker materializes its own copy from the
    topics when it starts, so this runs before the first worker of a run; a second call
    re-publishes the plain tables and embeds nothing again. One report per table.

    Runs its own event loop: from async code, call it in a thread (`asyncio.to_thread`)."""
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        openai_base_url=sim.extra["base_url"],
        openai_api_key="simulator",
    )
    return publish_samples(settings)


@dataclass(frozen=True, slots=True)
class Encoded:
    """An event ready to send."""

    event_id: str
    key: bytes
    value: bytes
    created: float
    """The event's own `timestamp`, as epoch seconds."""


def ticket(prefix: str, n: int) -> Encoded:
    """Event `n` of a run: a support ticket from one of the sample customers."""
    key = f"C-{1001 + n % CUSTOMERS}"
    text = f"{TICKETS[n % len(TICKETS)]} (ticket {n})"
    event = text_event(text, key=key, source="bench", event_id=f"{prefix}-{n}")
    value = event.model_dump_json().encode()
    return Encoded(event.id, key.encode(), value, event.timestamp.timestamp())


def encode_events(prefix: str, count: int) -> list[Encoded]:
    return [ticket(prefix, n) for n in range(count)]


# --- Kafka I/O -----------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, events: Sequence[Encoded], partitions: int) -> float:
    """Send every event (round-robin over the partitions, so each gets its share) and wait
    for the broker's acks; returns the seconds it took."""
    started = time.perf_counter()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        pending = [
            await producer.send(topic, event.value, key=event.key, partition=n % partitions)
            for n, event in enumerate(events)
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


def partitions_of(topic: str, partitions: int) -> list[Any]:
    return [TopicPartition(topic, p) for p in range(partitions)]


class OffsetProbe:
    """Counts the records in topics from their end offsets, without reading them."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def __aenter__(self) -> OffsetProbe:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def count(self, topics: Iterable[str], partitions: int) -> int:
        tps = [tp for topic in topics for tp in partitions_of(topic, partitions)]
        ends = await self._consumer.end_offsets(tps)
        return int(sum(ends.values()))


async def read_topic(
    bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0
) -> list[Any]:
    """Every record of `topic` (aiokafka ConsumerRecords), from its start to its current end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = partitions_of(topic, partitions)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise BenchError(f"reading {topic} took over {timeout_s:.0f} s")
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


def epoch_s(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass(frozen=True, slots=True)
class OutputRow:
    """What the benchmarks need of one output record."""

    event_id: str
    worker: str
    calls: int
    received_at: float
    produced_at: float
    record_ts: float
    worker_latency_ms: float


def output_row(record: Any) -> OutputRow:
    data = json.loads(record.value)
    return OutputRow(
        event_id=data["event_id"],
        worker=data["worker"],
        calls=int(data["totals"]["model_calls"]),
        received_at=epoch_s(data["received_at"]),
        produced_at=epoch_s(data["produced_at"]),
        record_ts=record.timestamp / 1000,
        worker_latency_ms=float(data["totals"]["latency_ms"]),
    )


# --- statistics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Steady:
    """A rate over the middle of a run: the first and last `trim` of its span are dropped."""

    first: float
    last: float
    start: float
    end: float
    items: int
    weight: float
    rate: float

    @property
    def window_s(self) -> float:
        return self.end - self.start

    @property
    def span_s(self) -> float:
        return self.last - self.first

    def as_dict(self) -> dict[str, float]:
        return {
            "span_s": round(self.span_s, 3),
            "window_s": round(self.window_s, 3),
            "items_in_window": self.items,
            "weight_in_window": self.weight,
            "rate_per_s": round(self.rate, 3),
        }


def steady_rate(points: Sequence[tuple[float, float]], trim: float = 0.15) -> Steady:
    """`points` are (time, weight): e.g. an output's produced_at and its model calls.

    The window is the middle of [first, last] by time; rate = weight in it / its length."""
    if len(points) < 2:
        raise BenchError(f"{len(points)} points are too few for a rate")
    times = sorted(t for t, _ in points)
    first, last = times[0], times[-1]
    start, end = first + trim * (last - first), last - trim * (last - first)
    inside = [(t, w) for t, w in points if start <= t < end]
    weight = sum(w for _, w in inside)
    rate = weight / (end - start) if end > start else math.nan
    return Steady(first, last, start, end, len(inside), weight, rate)


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(share * len(sorted_values)))
    return float(sorted_values[rank - 1])


# --- child processes -----------------------------------------------------------------------


def simulator(run_dir: Path, latency_ms: float, jitter_ms: float = 0.0) -> Child:
    """The model SIMULATOR in its own process, fixed seed so jitter replays."""
    flags = ["--latency-ms", f"{latency_ms:g}", "--jitter-ms", f"{jitter_ms:g}", "--seed", "7"]
    return start_modelsim(free_port(), run_dir / "logs", flags)


@dataclass
class WorkerGroup:
    """`llmflow worker` commands sharing one consumer group; each serves its metrics (a
    supervisor of several processes, those of its processes)."""

    children: list[Child] = field(default_factory=list)
    metrics_ports: list[int] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    """Processes of each command (1 when not given): members of the group it adds."""

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def check_alive(self) -> None:
        for child in self.children:
            if not child.alive():
                raise BenchError(f"{child.name} exited early:\n{child.log_tail()}")

    def stop(self) -> None:
        """Stop every worker, in parallel (each stop waits for a clean faust shutdown)."""
        threads = [threading.Thread(target=child.stop) for child in self.children]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def worker_env(
    bootstrap: str,
    sim: Child,
    app_id: str,
    concurrency: int,
    data_dir: Path,
    metrics_port: int,
) -> dict[str, str]:
    return launch.worker_env(
        bootstrap,
        sim.extra["base_url"],
        app_id,
        data_dir=data_dir,
        concurrency=concurrency,
        metrics_port=metrics_port,
    )


def start_workers(
    group: WorkerGroup,
    count: int,
    *,
    label: str,
    run_dir: Path,
    bootstrap: str,
    sim: Child,
    topology: TopologyCopy,
    concurrency: int,
    processes: int = 1,
) -> str:
    """Start `count` workers of `processes` processes each into `group` (one fresh consumer
    group); returns its id.

    The caller owns `group` and stops it in a `finally`, even when a start fails. Publish
    the org data first (`publish_org_samples`): a worker starts with the tables' topics as
    they are, and finds no record in a table that is still empty."""
    app_id = f"bench-{label}-{uuid.uuid4().hex[:6]}"
    for n in range(1, count + 1):
        port = free_port()
        name = f"{label}-worker{n}"
        env = worker_env(bootstrap, sim, app_id, concurrency, run_dir / "state" / name, port)
        args = ["--loglevel", "warn"]
        child = start_worker(name, [topology.path], run_dir / "logs", env, args, processes)
        group.children.append(child)
        group.metrics_ports.append(port)
        group.processes.append(processes)
    return app_id


def quota_shares(port: int) -> list[float]:
    """The `llmflow_quota_share_ratio` gauges on a metrics port, each a process's share of the
    input partitions: one for a worker, one per process for a supervisor (`process` label);
    none while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return []
    return [
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(("llmflow_quota_share_ratio ", "llmflow_quota_share_ratio{"))
    ]


async def wait_settled(group: WorkerGroup, timeout_s: float = 90.0) -> float:
    """Wait until every worker process owns input partitions and together they own all of
    them, twice in a row half a second apart (a rebalance in progress reports shares of 0)."""
    started = time.monotonic()
    stable = 0
    members = sum(group.processes) + len(group.metrics_ports) - len(group.processes)
    while time.monotonic() - started < timeout_s:
        group.check_alive()
        shares = [share for port in group.metrics_ports for share in quota_shares(port)]
        owned = [s for s in shares if s > 0]
        settled = len(owned) == members and abs(sum(owned) - 1.0) < 1e-6
        stable = stable + 1 if settled else 0
        if stable >= 2:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    tails = "\n".join(f"--- {c.name}\n{c.log_tail(1500)}" for c in group.children)
    raise BenchError(f"workers did not settle in {timeout_s:.0f} s:\n{tails}")


def start_lean(
    run_dir: Path,
    label: str,
    *,
    bootstrap: str,
    sim: Child,
    topology: TopologyCopy,
    call: str,
    concurrency: int,
) -> Child:
    """The lean consumer (`dev.bench.lean`) in its own process, on the topology copy's input
    and output topics, sending `call` of that copy to `sim`."""
    log_dir = run_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{label}.log"
    args = [sys.executable, "-m", "dev.bench.lean", "--bootstrap", bootstrap]
    args += ["--source", topology.input_topic, "--sink", topology.output_topic]
    args += ["--group", f"bench-{label}-{uuid.uuid4().hex[:6]}"]
    args += ["--base-url", sim.extra["base_url"], "--topology", str(topology.path)]
    args += ["--call", call, "--concurrency", str(concurrency)]
    with log_path.open("ab") as out:
        process = subprocess.Popen(  # from the checkout, where `dev` is importable
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT
        )
    return Child(label, process, log_path)


# --- profiles ------------------------------------------------------------------------------

# Frames are attributed by the first component of their file path as py-spy prints it
# (site-packages and the standard library appear relative, e.g. `openai/_client.py`).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "openai SDK": ("openai/",),
    "HTTP client (aiohttp/httpx)": (
        "aiohttp/",
        "httpx/",
        "httpx2/",  # the HTTP client of openai 3.x
        "httpcore/",
        "anyio/",
        "multidict/",
        "yarl/",
        "h11/",
        "aiohappyeyeballs/",
        "frozenlist/",
        "propcache/",
        "sniffio/",
    ),
    "pydantic": ("pydantic/", "pydantic_core/", "annotated_types/"),
    "JSON (stdlib json)": ("json/",),
    "JSON schema validation": (
        "jsonschema/",
        "referencing/",
        "rpds/",
        "jsonschema_specifications/",
    ),
    "Jinja2 prompts": ("jinja2/", "markupsafe/"),
    "token counting (bpe_openai)": ("bpe_openai/", "services/modelsim/tokens.py"),
    "faust/mode": ("faust/", "mode/", "venusian/", "croniter/", "terminaltables/"),
    "Kafka client (aiokafka)": ("aiokafka/", "kafka/"),
    "prometheus_client": ("prometheus_client/",),
    "asyncio (tasks, futures)": ("asyncio/", "selectors.py", "uvloop/"),
    "logging": ("logging/",),
    "llmflow code": ("services/", "schemas/", "topologies/"),
}
OTHER = "other (stdlib, ...)"


def frame_category(frame: str) -> str | None:
    """`func (path/file.py:12)` -> its category, or None for frames of no known library."""
    start = frame.rfind(" (")
    path = frame[start + 2 :] if start >= 0 else frame
    for prefix in ("site-packages/", "lib/python3.11/"):
        if prefix in path:
            path = path.split(prefix, 1)[1]
    for category, prefixes in CATEGORIES.items():
        if path.startswith(prefixes):
            return category
    return None


def py_spy_path() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise BenchError("py-spy is not installed (pip install py-spy)")
    return found


def record_profile(pid: int, out: Path, duration_s: float) -> dict[str, Any]:
    """py-spy `record` of a running process into collapsed stacks (`--format raw`).

    Blocking mode first (consistent stacks; the process pauses briefly per sample), then
    `--nonblocking` if the first attempt fails (e.g. ptrace restrictions)."""
    base = [py_spy_path(), "record", "--pid", str(pid), "-d", f"{max(1, round(duration_s))}"]
    base += ["-r", "100", "--format", "raw", "-o", str(out)]
    tries: list[dict[str, Any]] = []
    for extra in ([], ["--nonblocking"]):
        result = subprocess.run(
            base + extra, capture_output=True, text=True, timeout=duration_s + 60, check=False
        )
        tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
        tries.append({"args": base[1:] + extra, "returncode": result.returncode, "tail": tail})
        if result.returncode == 0 and out.exists() and out.stat().st_size > 0:
            return {
                "file": str(out),
                "mode": "nonblocking" if extra else "blocking",
                "tries": tries,
            }
    return {"file": None, "mode": None, "tries": tries}


EVENT_LOOP_ITSELF = "event loop itself (epoll wait, scheduling)"
# Where the event loop hands control to a callback or task step: frames below it are the
# task's own; frames above it (mode's Worker, run_forever) sit at the root of every sample.
_DISPATCH = "Handle._run (asyncio/events.py"
_MAIN_ROOTS = ("_run_module_as_main", "<module>")


def summarise_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """CPU shares of the event-loop thread by library, from collapsed stacks.

    Only the main thread counts (other threads are mostly pools idling in `queue.get`, which
    py-spy may sample as active; they are reported apart). Frames above the event loop's
    dispatch are ignored, so a library that merely started the loop is not credited.
    `self_share`: each sample goes to the innermost frame of a known library; samples outside
    any task (the loop waiting in epoll or scheduling) go to EVENT_LOOP_ITSELF.
    `inclusive_share`: each sample counts for every library on its task stack (e.g. everything
    under an openai SDK call, its HTTP client and pydantic parsing included)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf_functions: Counter[str] = Counter()
    main = other_threads = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack.strip() or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if not frames[0].startswith(_MAIN_ROOTS):
            other_threads += count
            continue
        main += count
        leaf_functions[frames[-1]] += count
        dispatch = max((i for i, f in enumerate(frames) if f.startswith(_DISPATCH)), default=-1)
        if dispatch < 0:
            own[EVENT_LOOP_ITSELF] += count
            continue
        categories = [frame_category(f) for f in frames[dispatch + 1 :]]
        innermost = next((c for c in reversed(categories) if c is not None), None)
        own[innermost or OTHER] += count
        for category in {c for c in categories if c is not None}:
            inclusive[category] += count
    if main == 0:
        return {"samples": 0, "other_thread_samples": other_threads}

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {name: round(n / main, 4) for name, n in counter.most_common()}

    return {
        "samples": main,
        "other_thread_samples": other_threads,
        "self_share": shares(own),
        "inclusive_share": shares(inclusive),
        "top_leaf_functions": [
            {"frame": frame, "share": round(n / main, 4)}
            for frame, n in leaf_functions.most_common(top)
        ],
    }


def bound_verdict(
    worker_cores: float,
    machine_share: float,
    cores_by_process: Mapping[str, float],
    profile: Mapping[str, Any],
) -> str:
    """One sentence on what limits a run, from CPU use and the profile's self shares."""
    top = list(profile.get("self_share", {}).items())[:4]
    where = ", ".join(f"{name} {share:.0%}" for name, share in top) or "no profile"
    users = ", ".join(f"{name} {cores:.2f}" for name, cores in cores_by_process.items())
    machine_cores = os.cpu_count() or 1
    if worker_cores >= 0.85:
        return (
            f"CPU-bound in the worker: its one event loop uses {worker_cores:.2f} cores; "
            f"worker CPU by library (self): {where}"
        )
    if machine_share >= 0.90:
        return (
            f"CPU-bound on the machine: {machine_share:.0%} of {machine_cores} cores busy "
            f"(cores used: {users}); the worker gets {worker_cores:.2f} cores; "
            f"worker CPU by library (self): {where}"
        )
    return (
        f"not CPU-bound (worker {worker_cores:.2f} cores, machine {machine_share:.0%} busy): "
        f"the worker waits more than it computes; worker CPU by library (self): {where}"
    )


# --- machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from importlib import metadata

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("faust-streaming", "aiokafka", "kafka-python", "openai", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    load = os.getloadavg()
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "load_average_at_start": [round(v, 2) for v in load],
        **versions,
    }
