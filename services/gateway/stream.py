"""`GET /v1/topics/{topic}/results`: a topology's results as server-sent events.

Each result is `event: <record type>`, `id: <position>` (see `cursor`) and `data: <the
record>`; a comment line every `heartbeat_s` keeps proxies from closing an idle stream. A
client resumes after the last id it got (`Last-Event-ID`, or `last_event_id=`): from the
index while it still holds those positions, else from the topics. Each client has a queue
of `stream_queue` results: one that falls behind gets an `error` event and is closed, and
resumes by id."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
from aiohttp import web

from llmflow.services.gateway import cursor
from llmflow.services.gateway.follow import read_from
from llmflow.services.gateway.results import TP, Entry, ResultIndex, Subscription

HEARTBEAT = b": heartbeat\n\n"
"""A comment line: keeps proxies from closing an idle stream; clients skip it."""


@dataclass(frozen=True)
class StreamOptions:
    heartbeat_s: float
    queue: int
    write_timeout_s: float


def event_bytes(name: str, event_id: str | None, data: bytes) -> bytes:
    """One server-sent event; `data` is one line of JSON."""
    if b"\n" in data or b"\r" in data:
        data = orjson.dumps(orjson.loads(data))
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


class ResultStream:
    """One client's stream of one topology's results from `positions` on."""

    def __init__(
        self,
        response: web.StreamResponse,
        index: ResultIndex,
        subscription: Subscription,
        topics: list[str],
        positions: dict[TP, int],
        options: StreamOptions,
    ) -> None:
        self.response = response
        self.index = index
        self.subscription = subscription
        self.topics = topics  # output, dead-letter, parked
        self.positions = dict(positions)
        self.options = options
        self.written_at = 0.0

    async def _write(self, data: bytes) -> None:
        await asyncio.wait_for(self.response.write(data), self.options.write_timeout_s)
        self.written_at = asyncio.get_running_loop().time()

    def _event(self, entry: Entry) -> bytes:
        """The event of `entry` (empty when this stream passes it), its position taken."""
        tp = (entry.topic, entry.partition)
        if entry.offset < self.positions.get(tp, 0):
            return b""  # given before this position
        self.positions[tp] = entry.offset + 1
        if not self.subscription.wants(entry):
            return b""
        position = cursor.encode(self.positions, self.topics)
        return event_bytes(entry.record_type, position, entry.value)

    async def give(self, *entries: Entry) -> None:
        if data := b"".join([self._event(entry) for entry in entries]):
            await self._write(data)

    async def run(self) -> None:
        """Give what the index holds after the positions, then every new result until the
        client leaves or falls behind."""
        for entry in self.index.subscribe(self.subscription):
            await self.give(entry)
        queue = self.subscription.queue
        while True:
            if self.subscription.overflowed:
                await self.fail(
                    "behind",
                    f"more than {self.options.queue} results waited for this client; "
                    "reconnect with the last id to go on",
                )
                return
            try:
                entry = await asyncio.wait_for(queue.get(), self.options.heartbeat_s)
            except TimeoutError:
                await self._write(HEARTBEAT)
                continue
            # What else waits goes in the same write: a client that keeps up drains a burst
            # as fast as the index takes it, not a result per turn of the event loop.
            waiting = [queue.get_nowait() for _ in range(queue.qsize())]
            await self.give(entry, *waiting)

    async def fail(self, error: str, message: str) -> None:
        """An `error` event with the position reached (resume from it), before closing."""
        reason = {"error": error, "message": message}
        position = cursor.encode(self.positions, self.topics)
        await self._write(event_bytes("error", position, orjson.dumps(reason)))

    async def heartbeat(self) -> None:
        """A comment line, when none was written for `heartbeat_s`."""
        now = asyncio.get_running_loop().time()
        if now - self.written_at >= self.options.heartbeat_s:
            await self._write(HEARTBEAT)

    def close(self) -> None:
        self.index.unsubscribe(self.subscription)


async def replay_topics(
    stream: ResultStream, bootstrap_servers: str, topology_of: dict[str, str]
) -> None:
    """Give the results after the stream's positions that the index no longer holds, from
    the topics, until the index holds the rest."""

    def done(reached: dict[TP, int]) -> bool:
        tps = [tp for tp in stream.index.covered if tp[0] in stream.topics]
        return stream.index.holds_after(reached, tps)

    async for tp, offset, entry in read_from(
        bootstrap_servers, topology_of, stream.positions, done
    ):
        await stream.heartbeat()  # a long read keeps proxies from closing the stream
        if tp is None:
            continue
        if entry is not None:
            await stream.give(entry)
        else:
            stream.positions[tp] = max(stream.positions.get(tp, 0), offset + 1)
