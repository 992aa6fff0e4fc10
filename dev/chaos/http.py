"""HTTP clients of the `gateway` scenario: publishers that send events in batches and send a
batch again (the same ids) until it gets its 202, and a stream reader that reconnects with
its last id whenever the stream breaks. What a 202 acknowledged goes into the scenario's
`Feed`, so `count` checks that every acknowledged event got its result."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence

import aiohttp

from dev.bench.harness import Encoded
from dev.chaos.ledger import Feed, Sent

RETRY_PAUSE_S = 0.5
GIVE_UP_S = 300.0
TIMEOUT = aiohttp.ClientTimeout(total=30)
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5, sock_read=30)


class GatewayError(Exception):
    """The gateway refused a batch for a reason a retry does not mend."""


class Publisher:
    """Posts batches to one topic; keeps each acknowledged event in `feed.sent`."""

    def __init__(self, base: str, topic: str, token: str, feed: Feed) -> None:
        self.url = f"{base}/v1/topics/{topic}/events"
        self.topic = topic
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.feed = feed
        self.retries: Counter[str] = Counter()
        """Why a batch was sent again: an HTTP status, or `connection`."""

    async def post(self, session: aiohttp.ClientSession, batch: Sequence[Encoded]) -> None:
        body = b"[" + b",".join(event.value for event in batch) + b"]"
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            try:
                async with session.post(
                    self.url, data=body, headers=self.headers, timeout=TIMEOUT
                ) as response:
                    if response.status == 202:
                        acks = (await response.json())["events"]
                        self._acked(batch, acks)
                        return
                    if response.status not in (429, 503):
                        raise GatewayError(f"{response.status}: {(await response.text())[:300]}")
                    self.retries[str(response.status)] += 1
            except (aiohttp.ClientError, TimeoutError):
                self.retries["connection"] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
        self.feed.failed.extend(f"{e.event_id}: no 202 in {GIVE_UP_S:g} s" for e in batch)

    def _acked(self, batch: Sequence[Encoded], acks: list[dict[str, object]]) -> None:
        now = time.time()
        for event, ack in zip(batch, acks, strict=True):
            assert ack["id"] == event.event_id
            source = (self.topic, int(str(ack["partition"])), int(str(ack["offset"])))
            self.feed.sent.append(Sent(event.event_id, source, event.created, now))

    async def paced(
        self, session: aiohttp.ClientSession, events: Sequence[Encoded], rate: float, batch: int
    ) -> None:
        """Every `batch` events at `rate` events/s, each batch on its own task (a batch that
        waits for a restarted gateway does not hold up the next)."""
        began = time.monotonic()
        tasks = []
        for start in range(0, len(events), batch):
            await asyncio.sleep(max(0.0, began + start / rate - time.monotonic()))
            chunk = events[start : start + batch]
            tasks.append(asyncio.create_task(self.post(session, chunk)))
        await asyncio.gather(*tasks)


class StreamReader:
    """Reads a topology's results as server-sent events, reconnecting with the last id it
    got whenever the stream breaks (a killed gateway, an `error` event)."""

    def __init__(self, base: str, topic: str, token: str) -> None:
        self.url = f"{base}/v1/topics/{topic}/results"
        self.token = token
        self.seen: Counter[str] = Counter()
        """Event ids of the results read, with how often each was read."""
        self.last_id: str | None = None
        self.reconnects = 0
        self.errors: Counter[str] = Counter()
        self.connected = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            headers = {"Authorization": f"Bearer {self.token}"}
            if self.last_id is not None:
                headers["Last-Event-ID"] = self.last_id
            try:
                async with session.get(self.url, headers=headers, timeout=STREAM_TIMEOUT) as answer:
                    if answer.status == 200:
                        self.connected.set()
                        await self._read(answer)
                    else:
                        self.errors[str(answer.status)] += 1
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.reconnects += 1
            await asyncio.sleep(RETRY_PAUSE_S)

    async def _read(self, answer: aiohttp.ClientResponse) -> None:
        fields: dict[str, str] = {}
        async for raw in answer.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if fields.get("event") == "error":
                self.errors[json.loads(fields["data"]).get("error", "error")] += 1
            elif "data" in fields:
                self.seen[json.loads(fields["data"]).get("event_id")] += 1
            if "id" in fields:
                self.last_id = fields["id"]
            fields = {}
