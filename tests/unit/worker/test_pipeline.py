"""The pipeline without Kafka: real HTTP to an in-process model simulator."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI
from PIL import Image

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.services.images.prepare import ImageLimits
from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app
from llmflow.services.orgdata.loader import load_samples
from llmflow.services.orgdata.store import OrgDataStore
from llmflow.services.worker.model_client import ModelClient, call_id
from llmflow.services.worker.pipeline import Pipeline, SourceMeta
from llmflow.services.worker.retry import RetryPolicy
from llmflow.topologies import Topology, load_topology

SOURCE = SourceMeta("in", 0, 42)
PipelineFactory = Callable[..., Any]


def _event(**fields: Any) -> bytes:
    body = {
        "id": "e-1",
        "kind": "text",
        "key": "C-1001",
        "timestamp": "2026-01-02T03:04:05Z",
        "source": "helpdesk",
        "text": "My invoice was charged twice and I need a refund today",
    }
    return json.dumps({**body, **fields}).encode()


@pytest.fixture
def store() -> OrgDataStore:
    store = OrgDataStore(":memory:")
    load_samples(store)
    return store


@pytest.fixture
async def make_pipeline(
    project_root: Path, store: OrgDataStore
) -> AsyncIterator[Callable[..., Any]]:
    servers: list[TestServer] = []
    clients: list[ModelClient] = []
    executor = ThreadPoolExecutor(2)

    async def make(
        topology: str | Topology = "support_triage", api_key: str = "k", **sim: Any
    ) -> Pipeline:
        server = TestServer(make_app(SimulatorConfig(**sim)))
        await server.start_server()
        servers.append(server)
        openai = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=api_key, max_retries=0)
        client = ModelClient({"default": openai}, policy=RetryPolicy(max_attempts=1))
        clients.append(client)
        if isinstance(topology, str):
            topology = load_topology(project_root / "topologies" / f"{topology}.yaml")
        return Pipeline(topology, client, store, ImageLimits(), executor, "test:1")

    yield make
    for client in clients:
        await client.close()
    for server in servers:
        await server.close()
    executor.shutdown()


async def test_text_event_gets_every_answer_and_its_lineage(
    make_pipeline: PipelineFactory, store: OrgDataStore
) -> None:
    pipeline = await make_pipeline()
    result = await pipeline.handle(_event(), SOURCE)
    assert isinstance(result, Output), result
    assert [c.name for c in result.calls] == ["classify", "summarize", "draft_reply"]
    summary = result.call("summarize")
    assert summary.answer.startswith(
        "[sim gpt-4o-mini] re: My invoice was charged twice and I need a refund today #"
    )
    assert summary.call_id == call_id("e-1", pipeline.topology, pipeline.topology.calls[1])
    record = store.get("customers", "C-1001")
    assert record is not None
    assert result.org_record is not None and result.org_record.version == record.version
    # The reply prompt was rendered with the customer's record.
    reply = result.call("draft_reply").answer
    assert reply.startswith(f"[sim gpt-4o-mini] re: Dear {record.data['name']}")
    assert set(result.call("classify").answer) == {"category", "priority", "sentiment"}
    assert (result.source_partition, result.source_offset) == (0, 42)
    assert result.totals.tokens_out == sum(c.tokens_out for c in result.calls) > 0


async def test_unknown_customer_is_answered_without_a_record(
    make_pipeline: PipelineFactory,
) -> None:
    result = await (await make_pipeline()).handle(_event(key="C-9999"), SOURCE)
    assert isinstance(result, Output)
    assert result.org_record is not None and result.org_record.version is None
    assert "Dear customer (unknown plan)" in result.call("draft_reply").answer


@pytest.mark.parametrize(
    ("raw", "stage", "kind"),
    [
        (b"\xff\xfe not json", "decode", "not_json"),
        (_event(text=""), "validate", "contract_violation"),
        (
            _event(kind="image", image={"url": "file:///x.jpg"}, text=None),
            "validate",
            "contract_violation",
        ),
    ],
)
async def test_bad_input_becomes_a_dead_letter(
    make_pipeline: PipelineFactory, raw: bytes, stage: str, kind: str
) -> None:
    result = await (await make_pipeline()).handle(raw, SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == (stage, kind)
    assert base64.b64decode(result.original_b64) == raw
    assert (result.source_topic, result.source_offset) == ("in", 42)


async def test_wrong_kind_is_routed_to_dead_letters(make_pipeline: PipelineFactory) -> None:
    body = json.loads(_event())
    body.pop("text")
    raw = json.dumps({**body, "kind": "image", "image": {"url": "file:///x.jpg"}}).encode()
    result = await (await make_pipeline()).handle(raw, SOURCE)
    assert isinstance(result, DeadLetter) and result.stage == "route"
    assert result.event_id == "e-1"


async def test_permanent_model_error_is_a_dead_letter(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline(api_key="wrong", require_api_key="right")
    result = await pipeline.handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == ("model", "http_401")


async def test_rate_limited_past_retries_is_a_dead_letter(make_pipeline: PipelineFactory) -> None:
    result = await (await make_pipeline(rate_429=1.0)).handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == ("model", "http_429_retries_exhausted")


async def test_template_error_is_a_prompt_dead_letter(
    make_pipeline: PipelineFactory, project_root: Path
) -> None:
    topology = load_topology(project_root / "topologies" / "support_triage.yaml")
    call = topology.calls[1]
    broken = call.model_copy(
        update={"prompt": call.prompt.model_copy(update={"user": "{{ event.nope }}"})}
    )
    topology = topology.model_copy(update={"calls": [topology.calls[0], broken]})
    result = await (await make_pipeline(topology)).handle(_event(), SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == ("prompt", "UndefinedError")
    assert "nope" in result.message


async def test_calls_and_events_run_concurrently(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline(latency_ms=200)
    started = time.perf_counter()
    results = await asyncio.gather(
        *(pipeline.handle(_event(id=f"e-{n}"), SOURCE) for n in range(20))
    )
    elapsed = time.perf_counter() - started
    assert all(isinstance(r, Output) for r in results)
    # 20 events x 3 calls of 200 ms each: sequentially 12 s; concurrently about 0.2 s.
    assert elapsed < 1.5, elapsed


def _jpeg_b64(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (0, 0, 255)).save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


async def test_image_event_is_prepared_and_described(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline("product_images")
    body = json.loads(_event(key="P-2001"))
    body.pop("text")
    raw = json.dumps({**body, "kind": "image", "image": {"data_base64": _jpeg_b64((2048, 1024))}})
    result = await pipeline.handle(raw.encode(), SOURCE)
    assert isinstance(result, Output), result
    assert [(i.width, i.height) for i in result.images] == [(1024, 512)]
    # JPEG re-encoding may move a channel by a step or two.
    described = re.search(r"\[image 1024x512 RGB mean #(\w{6})\]", result.call("alt_text").answer)
    assert described is not None
    red, green, blue = bytes.fromhex(described.group(1))
    assert red <= 2 and green <= 2 and blue >= 253
    assert result.org_record is not None and result.org_record.table == "products"


async def test_corrupt_image_is_an_image_dead_letter(make_pipeline: PipelineFactory) -> None:
    pipeline = await make_pipeline("product_images")
    body = json.loads(_event(key="P-2001"))
    body.pop("text")
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()
    raw = json.dumps({**body, "kind": "image", "image": {"data_base64": junk}}).encode()
    result = await pipeline.handle(raw, SOURCE)
    assert isinstance(result, DeadLetter)
    assert (result.stage, result.error_kind) == ("image", "unreadable")
