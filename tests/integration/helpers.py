"""Small helpers shared by integration tests."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from dev.probes import scrape, simulator_log, total
from llmflow.services.broker.topics import partition_counts
from llmflow.services.orgdata import OrgDataStore
from llmflow.services.orgdata.materializer import read_copy
from llmflow.topologies.collections import load_collections

__all__ = [
    "changelog",
    "keep_calls",
    "org_copy",
    "scrape",
    "simulator_log",
    "total",
    "wait_until_all_assigned",
]


def org_copy(bootstrap: str, prefix: str, *tables: str) -> OrgDataStore:
    """What a worker holds of `tables` now: a fresh copy, caught up with their topics."""
    collections = load_collections()
    store = OrgDataStore(":memory:", {t: collections[t] for t in tables if t in collections})
    return read_copy(store, bootstrap, {t: f"{prefix}{t}" for t in tables}, timeout_s=60)


def keep_calls(path: Path, *names: str) -> dict[str, Any]:
    """Rewrite a topology copy so it runs only the named calls (and no retrieval step, whose
    query embedding is a call of its own, nor routes); returns the spec."""
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    spec.pop("retrieval", None)
    spec.pop("routes", None)  # their conditions may name calls left out
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
            shares = [total(scrape(port), "llmflow_quota_share_ratio") for port in ports]
        except OSError:
            shares = []  # a worker not serving metrics yet
        if shares and all(share > 0 for share in shares):
            return
        time.sleep(0.5)
    raise AssertionError(f"workers not all assigned after {timeout_s:.0f} s: shares {shares}")


def changelog(bootstrap: str, topic: str) -> list[tuple[int, Any, Any]]:
    """Every record of a table's changelog, oldest first per partition: (partition, key,
    value), JSON-decoded; a tombstone's value is None."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tps = [TopicPartition(topic, p) for p in range(partition_counts(bootstrap, [topic])[topic])]

    async def read() -> list[tuple[int, Any, Any]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            records: list[tuple[int, Any, Any]] = []
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                for batch in (await consumer.getmany(timeout_ms=1000)).values():
                    records += [
                        (
                            r.partition,
                            json.loads(r.key) if r.key else None,
                            json.loads(r.value) if r.value is not None else None,
                        )
                        for r in batch
                    ]
            return records
        finally:
            await consumer.stop()

    return asyncio.run(read())


def wait_gateway_ready(base: str, worker: Any, timeout_s: float = 120.0) -> None:
    """Until the gateway at `base` is ready: the worker made the topics and the index caught
    up. Fails with the readiness reason and the worker's log tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5):
                return
        except urllib.error.HTTPError as exc:
            if time.monotonic() > deadline or not worker.alive():
                raise AssertionError(exc.read().decode() + worker.log_tail()) from exc
            time.sleep(0.5)
