"""Small helpers shared by integration tests."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a worker's /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def simulator_log(base_url: str) -> list[dict[str, Any]]:
    """The simulator's model requests (endpoint probes, `GET /models`, left out)."""
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/sim/requests", timeout=10) as response:
        entries: list[dict[str, Any]] = json.loads(response.read())
    return [e for e in entries if not e["path"].endswith("/models")]


def keep_calls(path: Path, *names: str) -> dict[str, Any]:
    """Rewrite a topology copy so it runs only the named calls; returns the spec."""
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    spec["calls"] = [call for call in spec["calls"] if call["name"] in names]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


def wait_until_all_assigned(ports: list[int], timeout_s: float = 120.0) -> None:
    """Until every worker (by metrics port) holds input partitions, i.e. the group is settled.

    A worker's quota share is its fraction of the input partitions: 0 until it is assigned
    and again while a rebalance has revoked them, so all shares above 0 means every worker
    took part in the same, finished rebalance.
    """
    deadline = time.monotonic() + timeout_s
    shares: list[float] = []
    while time.monotonic() < deadline:
        try:
            shares = [total(scrape(port), "llmflow_quota_share") for port in ports]
        except OSError:
            shares = []  # a worker not serving metrics yet
        if shares and all(share > 0 for share in shares):
            return
        time.sleep(0.5)
    raise AssertionError(f"workers not all assigned after {timeout_s:.0f} s: shares {shares}")
