"""The lean consumer of the overhead benchmark: its request, its commits, one pass of its loop
against fakes of Kafka and a local HTTP model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dev import PROJECT_ROOT
from dev.bench.lean import InOrderOffsets, Lean, request_body, request_template

SUPPORT_TRIAGE = PROJECT_ROOT / "topologies" / "support_triage.yaml"


def test_the_request_is_the_workers_call_with_the_event_text() -> None:
    template = request_template(SUPPORT_TRIAGE, "summarize")
    assert request_body(template, "My invoice is wrong.") == {
        "model": "gpt-4o-mini",
        "temperature": 0.0,
        "max_tokens": 120,
        "messages": [
            {
                "role": "system",
                "content": "Summarize the ticket in one sentence for a support agent.",
            },
            {"role": "user", "content": "My invoice is wrong."},
        ],
    }
    with pytest.raises(ValueError, match="no plain chat call named 'classify'"):
        request_template(SUPPORT_TRIAGE, "classify")  # its answer has a schema to ask for


def test_commits_move_only_over_unbroken_runs_of_done_events() -> None:
    offsets = InOrderOffsets()
    for offset in (10, 11, 12):
        offsets.start("p0", offset)
    offsets.start("p1", 5)
    offsets.finish("p0", 11)
    assert offsets.take() == {}  # 10 is still in flight
    offsets.finish("p1", 5)
    offsets.finish("p0", 10)
    assert offsets.take() == {"p0": 12, "p1": 6}
    assert offsets.take() == {}  # nothing moved since
    assert offsets.in_flight() == 1
    offsets.finish("p0", 12)
    assert offsets.take() == {"p0": 13}
    assert offsets.in_flight() == 0


@dataclass
class Record:
    offset: int
    key: bytes
    value: bytes


class FakeConsumer:
    """Hands out one batch, then asks the loop to stop (as SIGTERM would)."""

    def __init__(self, batch: dict[str, list[Record]], stop: asyncio.Event) -> None:
        self.batches = [batch]
        self.stop = stop
        self.commits: list[dict[Any, int]] = []

    async def getmany(self, timeout_ms: int) -> dict[str, list[Record]]:
        if self.batches:
            return self.batches.pop()
        self.stop.set()
        return {}

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(offsets)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.sent.append((topic, json.loads(value), key))
        acked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acked.set_result(None)
        return acked


@pytest.fixture
async def model_url() -> AsyncIterator[str]:
    """A chat completions endpoint that answers with the user message, upper-cased, and
    fails on "boom"."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        text = body["messages"][-1]["content"]
        if text == "boom":
            return web.json_response({"error": {"message": "no"}}, status=500)
        return web.json_response({"choices": [{"message": {"content": text.upper()}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        await runner.cleanup()


def record(offset: int, text: str) -> Record:
    event = {"id": f"e-{offset}", "kind": "text", "text": text}
    return Record(offset, f"C-{offset}".encode(), json.dumps(event).encode())


async def test_one_pass_answers_produces_and_commits_what_is_done(model_url: str) -> None:
    stop = asyncio.Event()
    consumer = FakeConsumer({"p0": [record(0, "a"), record(1, "boom"), record(2, "c")]}, stop)
    producer = FakeProducer()
    async with aiohttp.ClientSession() as session:
        lean = Lean(
            consumer=consumer,
            producer=producer,
            session=session,
            url=model_url,
            sink="out",
            template=request_template(SUPPORT_TRIAGE, "summarize"),
            concurrency=2,
        )
        await lean.run(stop)  # stops once the batch is out, after its events finish
    assert sorted((s[1]["event_id"], s[1]["answer"], s[2]) for s in producer.sent) == [
        ("e-0", "A", b"C-0"),
        ("e-2", "C", b"C-2"),
    ]
    assert all(topic == "out" for topic, _, _ in producer.sent)
    assert (lean.counts.answered, lean.counts.failed) == (2, 1)
    assert "offset 1" in lean.counts.errors[0]
    assert consumer.commits == [{"p0": 1}]  # the failed event holds back the one after it
