"""Read what running processes expose: a worker's Prometheus metrics, the SIMULATOR's request
log and a process's resident memory.

Shared by the reliability suite (`dev.chaos`) and the integration tests.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dev.bench.harness import proc_status_kib

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, timeout_s: float = 5.0) -> Samples:
    """Every sample of a worker's /metrics, keyed by (name, sorted labels)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def simulator_log(base_url: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The SIMULATOR's request log (`GET /sim/requests`): one entry per answered model
    request (endpoint probes, `GET /models`, left out)."""
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/sim/requests", timeout=timeout_s) as response:
        entries: list[dict[str, Any]] = json.loads(response.read())
    return [e for e in entries if not e["path"].endswith("/models")]


def simulator_stats(base_url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """`GET /sim/stats`: requests logged since the SIMULATOR started, by status and path."""
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/sim/stats", timeout=timeout_s) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def rss_kib(pid: int) -> int | None:
    """Resident memory now (VmRSS of /proc/<pid>/status), None once the process is gone."""
    return proc_status_kib(pid, "VmRSS")
