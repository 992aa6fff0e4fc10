"""A lean hand-written consumer: the fair baseline the overhead scenario measures the worker
against.

    python -m dev.bench.lean --bootstrap HOST:PORT --source TOPIC --sink TOPIC --group ID \
        --base-url http://127.0.0.1:PORT/v1 --topology FILE --call summarize --concurrency 200

What it does, in one process and one asyncio event loop, like one worker:

- consumes the input topic with aiokafka (its own consumer group, offsets not auto-committed);
- per event: `json.loads` of the record, then ONE aiohttp POST to the model's
  `/v1/chat/completions` with the body the worker builds for the same call of the same
  topology file (model, system prompt, the event's text as the user message, temperature,
  max_tokens), and reads the answer out of the response;
- keeps at most `concurrency` events in flight (a semaphore, taken before an event starts);
- produces a small JSON answer (event id, answer, time) to the output topic, keyed like the
  input, with acks from all replicas, and waits for that ack before the event counts as done;
- commits, every `COMMIT_INTERVAL_S` and on stop, per partition the offset after the longest
  run of done events from the last commit (in order: an event still in flight holds back
  the commit of every later one on its partition).

What it does not do, and the worker does (and pays CPU for): no validation of the event
against its contract nor of the answer against a schema; no org data lookup, retrieval or
prompt templating (the user message is the event's text as it is); no pay-once record of
answers, no spend budgets, no retries, timeouts, circuit breakers or fallbacks (a failed call
is counted, logged, and its offset never committed); no dead letters, routes, tracing,
metrics or health endpoint; no rebalance handling (it is alone in its consumer group); the
output is a few fields, not the worker's full result with its lineage.

So the worker ÷ this loop is what the framework's features cost on top of the same Kafka and
HTTP work, not on top of no work at all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from llmflow.topologies.loader import load_topology

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0
DRAIN_TIMEOUT_S = 30.0


def request_template(topology: Path, call: str) -> dict[str, Any]:
    """The fixed part of the chat request the worker sends for `call` of `topology`; the
    event's text goes in as the user message (`request_body`)."""
    found = [c for c in load_topology(topology).calls if c.name == call]
    if not found or found[0].kind != "chat" or found[0].output_schema is not None:
        raise ValueError(f"{topology} has no plain chat call named {call!r}")
    spec = found[0]
    template: dict[str, Any] = {"model": spec.model, "temperature": spec.temperature}
    if spec.max_tokens is not None:
        template["max_tokens"] = spec.max_tokens
    if spec.prompt.system:
        template["system"] = spec.prompt.system
    return template


def request_body(template: dict[str, Any], text: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    if system := template.get("system"):
        messages.insert(0, {"role": "system", "content": system})
    return {k: v for k, v in template.items() if k != "system"} | {"messages": messages}


class InOrderOffsets:
    """Offsets in flight per partition, and what may be committed: the offset after the
    last event of an unbroken run of done events, so nothing unanswered is skipped."""

    def __init__(self) -> None:
        self._started: dict[Hashable, deque[int]] = {}
        self._done: dict[Hashable, set[int]] = {}
        self._committable: dict[Hashable, int] = {}

    def start(self, tp: Hashable, offset: int) -> None:
        """Called in the order the records are read (increasing offsets per partition)."""
        self._started.setdefault(tp, deque()).append(offset)
        self._done.setdefault(tp, set())

    def finish(self, tp: Hashable, offset: int) -> None:
        started, done = self._started[tp], self._done[tp]
        done.add(offset)
        while started and started[0] in done:
            done.discard(first := started.popleft())
            self._committable[tp] = first + 1

    def take(self) -> dict[Hashable, int]:
        """The offsets to commit that moved since the last `take`."""
        taken, self._committable = self._committable, {}
        return taken

    def in_flight(self) -> int:
        return sum(len(started) for started in self._started.values())


@dataclass
class Counts:
    answered: int = 0
    failed: int = 0
    commits: int = 0
    errors: list[str] = field(default_factory=list)


class Lean:
    """The loop itself; `run` until `stop` is set."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        session: aiohttp.ClientSession,
        url: str,
        sink: str,
        template: dict[str, Any],
        concurrency: int,
    ) -> None:
        self.consumer, self.producer, self.session = consumer, producer, session
        self.url, self.sink, self.template = url, sink, template
        self.slots = asyncio.Semaphore(concurrency)
        self.offsets = InOrderOffsets()
        self.counts = Counts()
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        committer = asyncio.create_task(self._commit_every(COMMIT_INTERVAL_S, stop))
        try:
            while not stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    for record in records:
                        await self.slots.acquire()
                        self.offsets.start(tp, record.offset)
                        task = asyncio.create_task(self._answer(tp, record))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
        finally:
            if self.tasks:
                await asyncio.wait(set(self.tasks), timeout=DRAIN_TIMEOUT_S)
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._commit()

    async def _answer(self, tp: Any, record: Any) -> None:
        try:
            event = json.loads(record.value)
            body = request_body(self.template, event["text"])
            async with self.session.post(self.url, json=body) as response:
                response.raise_for_status()
                reply = await response.json()
            output = {
                "event_id": event["id"],
                "answer": reply["choices"][0]["message"]["content"],
                "produced_at": time.time(),
            }
            sent = await self.producer.send(self.sink, json.dumps(output).encode(), key=record.key)
            await sent
            self.offsets.finish(tp, record.offset)
            self.counts.answered += 1
        except Exception as exc:  # counted and shown; its offset is never committed
            self.counts.failed += 1
            if len(self.counts.errors) < 5:
                self.counts.errors.append(f"{tp} offset {record.offset}: {exc!r}")
                log.warning("event at %s offset %d failed: %r", tp, record.offset, exc)
        finally:
            self.slots.release()

    async def _commit(self) -> None:
        if offsets := self.offsets.take():
            await self.consumer.commit(offsets)
            self.counts.commits += 1

    async def _commit_every(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(interval_s)
            await self._commit()


async def serve(args: argparse.Namespace) -> Counts:
    """Run the loop until SIGTERM or SIGINT, then finish the events in flight and commit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    consumer = AIOKafkaConsumer(
        args.source,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    # One connection per slot at most, like an HTTP client pool sized to the concurrency.
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    headers = {"Authorization": f"Bearer {args.api_key}"}
    await consumer.start()
    await producer.start()
    try:
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            lean = Lean(
                consumer=consumer,
                producer=producer,
                session=session,
                url=f"{args.base_url.rstrip('/')}/chat/completions",
                sink=args.sink,
                template=request_template(args.topology, args.call),
                concurrency=args.concurrency,
            )
            await lean.run(stop)
            return lean.counts
    finally:
        await producer.stop()
        await consumer.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.lean", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--base-url", required=True, help="the model's /v1 URL")
    parser.add_argument("--api-key", default="simulator")
    parser.add_argument("--topology", type=Path, required=True, help="whose call to send")
    parser.add_argument("--call", default="summarize")
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    counts = asyncio.run(serve(args))
    print(
        f"answered {counts.answered}, failed {counts.failed}, commits {counts.commits}"
        + "".join(f"\n  {error}" for error in counts.errors),
        flush=True,
    )
    return 0 if not counts.failed else 1


if __name__ == "__main__":
    sys.exit(main())
