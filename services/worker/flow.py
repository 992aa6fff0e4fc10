"""faust fetches again as soon as it can: no fetch held by an idle partition, no
one-second sleep after a full buffer.

The fetcher of aiokafka sends one fetch at a time to a broker, and leaves out of it every
partition whose records the worker has not taken yet. On a busy worker that often leaves
only idle partitions in the request, and the broker holds such a fetch until data arrives
or `fetch_max_wait_ms` passes, which faust sets to 1.5 s: meanwhile no other fetch goes to
that broker, however many records wait on the busy partitions. Under steady load the worker
stalls for 1.5 s every few seconds while its pipeline idles. A shorter wait bounds the
stall; it costs an idle worker a few more empty fetches per second.

faust stops fetching a partition once its stream buffer is under high pressure
(`stream_buffer_maxsize` / 1.25 events) and starts again when the buffer is down to 40%.
When every partition is stopped, its fetch loop sleeps a whole second before it looks
again, whatever happens meanwhile. One fetch after such a pause brings back everything
that arrived during it, which fills the buffer again: under steady load the worker turns
into a loop of full buffer, one-second sleep, burst, with every event waiting a second or
more in front of an idle pipeline (a standing queue that does not drain while the worker
has CPU and agents to spare).

Here the loop waits for the first partition to be resumed instead, at most as long as
faust would have slept.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold a fetch of partitions with no new records."""

_faust_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer
_faust_on_buffer_drop = Consumer.on_buffer_drop
_faust_wait_next_records = Consumer._wait_next_records


def _resumed(consumer: Any) -> asyncio.Event:
    """Set when a partition stopped by a full buffer may be fetched again."""
    event: asyncio.Event = consumer.__dict__.setdefault("_llmflow_resumed", asyncio.Event())
    return event


def _on_buffer_drop(self: Any, tp: TP) -> None:
    _faust_on_buffer_drop(self, tp)
    _resumed(self).set()


async def _wait_next_records(self: Any, timeout: float) -> Any:  # noqa: ASYNC109 (faust's)
    if not self.flow_active or self.app.client_only or self._get_active_partitions():
        return await _faust_wait_next_records(self, timeout)
    # Every partition is stopped by a full buffer (faust would sleep 1 s here).
    resumed = _resumed(self)
    resumed.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(resumed.wait(), min(timeout, 1.0))
    return {}, self._get_active_partitions()


def _create_worker_consumer(self: Any, *args: Any, **kwargs: Any) -> Any:
    consumer = _faust_create_worker_consumer(self, *args, **kwargs)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when it starts its fetcher
    return consumer


def fetch_as_soon_as_drained() -> None:
    """Install both on faust's consumer (idempotent)."""
    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]
    Consumer.on_buffer_drop = _on_buffer_drop  # type: ignore[method-assign]
    Consumer._wait_next_records = _wait_next_records  # type: ignore[method-assign]
