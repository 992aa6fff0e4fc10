"""`llmflow_consumer_lag`: how far the worker's commits trail each partition it holds, read
at scrape time. The same measure KEDA scales on (the partition's end minus the group's
commit), seen from inside: records not yet answered or not yet committed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmflow.services.worker.commits import committed


class ConsumerLag(Collector):
    """One series per assigned partition whose end and commit are known, once `follow` has
    said where faust's consumer is."""

    def __init__(self) -> None:
        self._consumer: Callable[[], Any | None] = lambda: None

    def follow(self, consumer: Callable[[], Any | None]) -> None:
        """`consumer` returns faust's consumer, or None before the worker has one."""
        self._consumer = consumer

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "llmflow_consumer_lag",
            "Records of a partition after the worker's last commit (end offset - commit).",
            labels=["topic", "partition"],
        )
        consumer = self._consumer()
        if consumer is not None:
            for tp, lag in sorted(partition_lags(consumer).items()):
                family.add_metric([tp.topic, str(tp.partition)], lag)
        yield family


def partition_lags(consumer: Any) -> dict[Any, int]:
    """partition -> records after its commit; partitions with no fetch or no commit yet
    are left out (a made-up 0 would read as "caught up")."""
    lags: dict[Any, int] = {}
    try:
        assigned = consumer.assignment()
    except Exception:  # no aiokafka consumer yet, or between generations
        return lags
    for tp in assigned:
        try:
            end = consumer.highwater(tp)
        except Exception:  # revoked between assignment() and now
            continue
        commit = committed(consumer, tp)
        if end is not None and commit is not None:
            lags[tp] = max(0, int(end) - commit)
    return lags
