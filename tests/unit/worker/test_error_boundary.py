"""The error boundary of an event: whatever a record holds and whatever goes wrong while it is
handled, `Pipeline.handle` returns exactly one result that fits in a Kafka record and raises
nothing (but CancelledError); and what still escapes the agent ends the worker before the
event is acked. The fakes of test_pipeline stand in for models, org data and budgets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import string
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import ModelCallResult, Output
from llmflow.schemas.parked import Parked
from llmflow.services.images.prepare import ImageLimits
from llmflow.services.orgdata.search import Hit
from llmflow.services.orgdata.store import OrgRecord
from llmflow.services.sdk.consumer import parse_result
from llmflow.services.worker import app as app_module
from llmflow.services.worker import pipeline as pipeline_module
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.pipeline import (
    DEFAULT_MAX_RECORD_BYTES,
    MESSAGE_MAX_CHARS,
    RECORD_RESERVE_BYTES,
    Pipeline,
    Result,
    SourceMeta,
)
from llmflow.services.worker.ports import Budgets, ModelRunner, OrgData, OverBudget, Passages
from llmflow.services.worker.settings import Settings
from llmflow.topologies import ModelCall, Topology, load_topology
from llmflow.topologies.collections import load_collections
from llmflow.topologies.spec import Route
from tests.unit.worker.test_pipeline import ORGDATA, FakeBudgets, FakeModels, FakePassages

TOPOLOGIES = Path(__file__).resolve().parents[3] / "topologies"
SOURCE = SourceMeta("in", 3, 42)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _event(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "e-1",
        "kind": "text",
        "key": "C-1001",
        "timestamp": "2026-01-02T03:04:05Z",
        "source": "helpdesk",
        "text": "My invoice was charged twice",
    }
    return {k: v for k, v in (body | fields).items() if v is not None}


def _raw(**fields: Any) -> bytes:
    return json.dumps(_event(**fields)).encode()


def _text_image(url: str) -> bytes:
    return _raw(kind="text_image", key="P-2001", images=[{"url": url}])


def _size(result: Result) -> int:
    return len(result.model_dump_json().encode())


def _budget(source: SourceMeta = SOURCE, limit: int = DEFAULT_MAX_RECORD_BYTES) -> int:
    return limit - RECORD_RESERVE_BYTES - source.key_size


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


PipelineFactory = Callable[..., Pipeline]


@pytest.fixture
def make(executor: ThreadPoolExecutor, tmp_path: Path) -> PipelineFactory:
    def build(
        name: str | Topology = "support_triage",
        *,
        models: ModelRunner | None = None,
        orgdata: OrgData = ORGDATA,
        budgets: Budgets | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        passages: Passages | None = None,
    ) -> Pipeline:
        return Pipeline(
            load_topology(TOPOLOGIES / f"{name}.yaml") if isinstance(name, str) else name,
            models or FakeModels(),
            orgdata,
            ImageLimits(file_root=tmp_path),
            executor,
            "test:1",
            budgets=budgets,
            max_record_bytes=max_record_bytes,
            passages=passages or FakePassages(),
            collections=load_collections(),
        )

    return build


def _dead(result: Result, stage: str, kind: str) -> DeadLetter:
    assert isinstance(result, DeadLetter), result
    assert (result.stage, result.error_kind) == (stage, kind), result.message
    assert (result.source_topic, result.source_partition, result.source_offset) == ("in", 3, 42)
    assert _size(result) <= _budget()
    return result


# --- cases seen in the field -------------------------------------------------------------


async def test_a_tombstone_is_a_decode_dead_letter(make: PipelineFactory) -> None:
    models = FakeModels()
    letter = _dead(await make(models=models).handle(None, SOURCE), "decode", "tombstone")
    assert letter.event_id is None and letter.original_b64 is None
    assert (letter.original_size, letter.original_sha256) == (0, EMPTY_SHA256)
    assert models.asked == []


DEEP = {
    "arrays": b"[" * 6000 + b"]" * 6000,
    "objects": b'{"a":' * 5000 + b"1" + b"}" * 5000,
    "unclosed": b"[" * 100_000,
    "inside-an-event": _raw()[:-1] + b', "attributes": ' + b"[" * 6000 + b"]" * 6000 + b"}",
}


@pytest.mark.parametrize("raw", DEEP.values(), ids=DEEP.keys())
async def test_deep_nesting_is_a_decode_dead_letter_without_recursion(
    make: PipelineFactory, raw: bytes
) -> None:
    letter = _dead(await make().handle(raw, SOURCE), "decode", "not_json")
    assert "recursion limit" in letter.message or "EOF" in letter.message
    assert letter.original_b64 is not None and base64.b64decode(letter.original_b64) == raw


async def test_a_contract_violation_keeps_the_id_of_nested_but_bounded_json(
    make: PipelineFactory,
) -> None:
    nested = {"id": "e-7", "attributes": json.loads("[" * 150 + "]" * 150)}
    letter = _dead(await make().handle(_raw(**nested), SOURCE), "validate", "contract_violation")
    assert letter.event_id == "e-7"
    # An id the contract would refuse is not taken over into the dead letter.
    for bad_id in ["x" * 500_000, "", 7]:
        letter = _dead(
            await make().handle(_raw(id=bad_id), SOURCE), "validate", "contract_violation"
        )
        assert letter.event_id is None


@dataclass
class Raising:
    """Replaces `load_image_bytes`: raises `error` for every URL."""

    error: Exception
    urls: list[str] = field(default_factory=list)

    def __call__(self, url: str, limits: ImageLimits) -> bytes:
        self.urls.append(url)
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ValueError("embedded null byte"),
        RuntimeError("Symlink loop from '/images/a'"),
        OSError(36, "File name too long"),
        MemoryError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_an_unexpected_image_error_is_an_internal_error_of_stage_image(
    make: PipelineFactory, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    fetch = Raising(error)
    monkeypatch.setattr(pipeline_module, "load_image_bytes", fetch)
    models = FakeModels()
    raw = _text_image("file:///images/a%00.jpg")
    result = await make("product_images", models=models).handle(raw, SOURCE)
    letter = _dead(result, "image", "internal_error")
    assert letter.message == f"{type(error).__name__}: {error}".removesuffix(": ")
    assert letter.event_id == "e-1" and models.asked == []
    assert fetch.urls == ["file:///images/a%00.jpg"]


async def test_real_hostile_file_urls_end_as_image_dead_letters(
    make: PipelineFactory, tmp_path: Path
) -> None:
    """Whatever the fetcher makes of them (its own refusal or an unexpected exception)."""
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    pipeline = make("product_images")
    for url in [f"{tmp_path.as_uri()}/a%00.jpg", (tmp_path / "loop-a").as_uri()]:
        result = await pipeline.handle(_text_image(url), SOURCE)
        assert isinstance(result, DeadLetter) and result.stage == "image", result


# --- every other stage -------------------------------------------------------------------


class BrokenOrgData:
    def get(self, table: str, key: str) -> OrgRecord | None:
        raise OSError("disk I/O error")


class BrokenBudgets(FakeBudgets):
    def over_budget(self, tenant: str) -> OverBudget | None:
        raise KeyError(tenant)


class BrokenPassages(FakePassages):
    """A search that fails with a bug, not with `OrgDataError`."""

    def search(self, collection: str, query: str, vector: Any, **options: Any) -> list[Hit]:
        raise IndexError("list index out of range")


class BrokenModels(FakeModels):
    """One call fails as a model may (ModelCallError), another with a bug."""

    async def run(
        self,
        call: ModelCall,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
    ) -> ModelCallResult:
        if call.name == "classify":
            raise ZeroDivisionError("division by zero")
        return await super().run(
            call, call_id=call_id, system=system, user=user, image_urls=image_urls
        )


async def test_unexpected_errors_name_their_stage(make: PipelineFactory) -> None:
    raw = _raw()
    letter = _dead(
        await make(orgdata=BrokenOrgData()).handle(raw, SOURCE), "enrich", "internal_error"
    )
    assert letter.message == "OSError: disk I/O error" and letter.event_id == "e-1"
    letter = _dead(
        await make(budgets=BrokenBudgets()).handle(raw, SOURCE), "route", "internal_error"
    )
    assert letter.message == "KeyError: 'C-1001'"
    result = await make(passages=BrokenPassages()).handle(raw, SOURCE)
    letter = _dead(result, "retrieve", "internal_error")
    assert letter.message == "IndexError: list index out of range"
    letter = _dead(await make(models=BrokenModels()).handle(raw, SOURCE), "model", "internal_error")
    assert letter.message == "ZeroDivisionError: division by zero"


def test_a_stage_failure_in_a_task_group_is_reported_before_a_bug() -> None:
    failure = pipeline_module.StageFailure("model", "http_401", "refused")
    bug = ZeroDivisionError("division by zero")
    nested = ExceptionGroup("calls", [bug, ExceptionGroup("inner", [failure])])
    assert pipeline_module._reported(nested) is failure
    assert pipeline_module._reported(ExceptionGroup("calls", [bug, KeyError("k")])) is bug
    assert pipeline_module._reported(bug) is bug


async def test_cancellation_goes_through(make: PipelineFactory) -> None:
    class Cancelled(FakeModels):
        async def run(self, call: ModelCall, **kwargs: Any) -> ModelCallResult:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await make(models=Cancelled()).handle(_raw(), SOURCE)


class SurrogateOrgData:
    def get(self, table: str, key: str) -> OrgRecord | None:
        raise OSError("no such file: /data/\udcff.db")  # an undecodable file name


async def test_messages_are_clipped_and_writable(make: PipelineFactory) -> None:
    # An unknown field is named in the message, and here it is huge.
    raw = _raw(**{"k" * 300_000: 1})
    letter = _dead(await make().handle(raw, SOURCE), "validate", "contract_violation")
    assert len(letter.message) <= MESSAGE_MAX_CHARS and "kkk" in letter.message
    assert parse_result(letter.model_dump_json().encode()) == letter
    # A lone surrogate cannot be written as UTF-8 JSON: it becomes "?".
    result = await make(orgdata=SurrogateOrgData()).handle(_raw(), SOURCE)
    letter = _dead(result, "enrich", "internal_error")
    assert letter.message == "OSError: no such file: /data/?.db"


async def test_a_failure_that_cannot_be_described_is_still_a_dead_letter(
    make: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(raw: bytes) -> str | None:
        raise RuntimeError("bug in the failure path")

    monkeypatch.setattr(pipeline_module, "_event_id_of", broken)
    letter = _dead(await make().handle(_raw(text=""), SOURCE), "validate", "internal_error")
    assert letter.event_id is None and "could not be described" in letter.message
    assert letter.original_size == len(_raw(text=""))


# --- dead letters that always fit --------------------------------------------------------


def _contract_violation(size: int) -> bytes:
    """Valid JSON of `size` bytes that breaks the contract (text too long)."""
    raw = _raw(text="")
    filler = size - len(raw)
    return _raw(text="x" * filler)


@pytest.mark.parametrize("size", [760_000, 1_000_000, 3_900_000])
@pytest.mark.parametrize("json_body", [False, True], ids=["bytes", "json"])
async def test_large_events_get_dead_letters_under_the_record_limit(
    make: PipelineFactory, size: int, json_body: bool
) -> None:
    raw = _contract_violation(size) if json_body else os.urandom(size)
    assert len(raw) == size
    expected = ("validate", "contract_violation") if json_body else ("decode", "not_json")
    letter = _dead(await make().handle(raw, SOURCE), *expected)
    assert _size(letter) < DEFAULT_MAX_RECORD_BYTES - RECORD_RESERVE_BYTES
    assert letter.original_b64 is None
    assert letter.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert letter.original_size == size
    assert letter.event_id == ("e-1" if json_body else None)


async def test_the_original_rides_along_while_it_fits(make: PipelineFactory) -> None:
    raw = os.urandom(700_000)  # 933,336 bytes of base64
    letter = _dead(await make().handle(raw, SOURCE), "decode", "not_json")
    assert letter.original_b64 is not None and base64.b64decode(letter.original_b64) == raw
    assert _size(letter) <= _budget()


async def test_the_size_check_is_exact_and_counts_the_key(make: PipelineFactory) -> None:
    limit = 80_000
    pipeline = make(max_record_bytes=limit)
    kept = dropped = 0
    # Around where 4/3 of the original plus the rest of the dead letter meets the budget.
    for size in range(56_000, 57_500, 7):
        raw = b"\xff" * size
        letter = await pipeline.handle(raw, SOURCE)
        assert isinstance(letter, DeadLetter)
        assert _size(letter) <= _budget(limit=limit)
        whole = letter.model_copy(update={"original_b64": base64.b64encode(raw).decode()})
        assert (letter.original_b64 is not None) == (_size(whole) <= _budget(limit=limit))
        kept += letter.original_b64 is not None
        dropped += letter.original_b64 is None
    assert kept and dropped
    # 45,000 bytes (60,000 in base64) fit in 80,000, but not beside a key of 20,000.
    raw = b"\xff" * 45_000
    letter = await pipeline.handle(raw, SOURCE)
    assert isinstance(letter, DeadLetter) and letter.original_b64 is not None
    keyed = SourceMeta("in", 3, 42, key_size=20_000)
    letter = await pipeline.handle(raw, keyed)
    assert isinstance(letter, DeadLetter) and letter.original_b64 is None
    assert _size(letter) <= _budget(keyed, limit)


async def test_an_output_too_large_for_a_record_is_a_dead_letter(
    make: PipelineFactory,
) -> None:
    limit = 30_000
    long_text = "refund " * 3_000  # 21,000 characters, echoed by several answers
    letter = await make(max_record_bytes=limit).handle(_raw(text=long_text), SOURCE)
    assert isinstance(letter, DeadLetter)
    assert (letter.stage, letter.error_kind, letter.event_id) == (
        "output",
        "record_too_large",
        "e-1",
    )
    assert "output record would take" in letter.message
    assert _size(letter) <= _budget(limit=limit)


async def test_a_parked_event_too_large_for_a_record_is_parked_without_its_original(
    make: PipelineFactory,
) -> None:
    limit = 30_000
    budgets = FakeBudgets({"thrifty": OverBudget("2026-01-02", 2.0, 1.0)})
    pipeline = make(budgets=budgets, max_record_bytes=limit)
    raw = _raw(tenant="thrifty")
    small = await pipeline.handle(raw, SOURCE)
    assert isinstance(small, Parked) and small.original_b64 is not None
    assert base64.b64decode(small.original_b64) == raw
    assert (small.original_sha256, small.original_size) == (
        hashlib.sha256(raw).hexdigest(),
        len(raw),
    )

    raw = _raw(tenant="thrifty", text="refund " * 3_000)  # 21,000 characters, 28,000 in base64
    parked = await pipeline.handle(raw, SOURCE)
    assert isinstance(parked, Parked)
    assert (parked.event_id, parked.reason, parked.original_b64) == ("e-1", "budget", None)
    assert (parked.original_sha256, parked.original_size) == (
        hashlib.sha256(raw).hexdigest(),
        len(raw),
    )
    assert (parked.source_topic, parked.source_partition, parked.source_offset) == (
        SOURCE.topic,
        SOURCE.partition,
        SOURCE.offset,
    )
    assert _size(parked) <= _budget(limit=limit)

    # Far over the default limit, as in the dead letters above: parked all the same.
    raw = _raw(tenant="thrifty", text="x" * 30_000, attributes={"pad": "y" * 1_000_000})
    parked = await make(budgets=budgets).handle(raw, SOURCE)
    assert isinstance(parked, Parked) and parked.original_b64 is None
    assert parked.original_size == len(raw) and _size(parked) <= _budget()


# --- property: anything in, exactly one writable result out ------------------------------


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 128, 255)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 8_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"id":', b"}")]))
    inner = draw(st.sampled_from([b"1", b'"e-1"', b"[]", b""]))
    closed = draw(st.booleans())
    return opener * depth + inner + (closer * depth if closed else b"")


IMAGE_REFS = st.one_of(
    st.fixed_dictionaries(
        {
            "url": st.sampled_from(
                [
                    "file:///images/a%00.jpg",
                    "file:///etc/passwd",
                    "file://remote/a.jpg",
                    "http://127.0.0.1:1/a.jpg",
                    "https://10.0.0.1/a.jpg",
                    "ftp://example.com/a.jpg",
                ]
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "data_base64": st.sampled_from([_png_b64(), "not base64!", ""])
            | st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=64)
        }
    ),
)

# Values the contract takes (mostly), by field; any JSON value replaces a field too.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "id": st.text(min_size=1, max_size=20) | st.text(max_size=200),
    "kind": st.sampled_from(["text", "image", "text_image", "audio"]),
    "key": st.sampled_from(["C-1001", "P-2001", "C-9999"]) | st.text(max_size=300),
    "tenant": st.sampled_from(["thrifty", "acme"]),
    "timestamp": st.sampled_from(["2026-01-02T03:04:05+01:00", "2026-01-02", "now"]),
    "source": st.text(min_size=1, max_size=10),
    "text": st.text(min_size=1, max_size=100),
    "attributes": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    "image": IMAGE_REFS,
    "images": st.lists(IMAGE_REFS, min_size=1, max_size=5),
    "schema_version": st.sampled_from([1, 1.0, 2, "1", True]),
}


@st.composite
def events(draw: st.DrawFn) -> bytes:
    """Events of every kind with some fields dropped, changed or replaced by any JSON."""
    body = _event(kind=draw(st.sampled_from(["text", "image", "text_image"])))
    if body["kind"] != "text":
        body["key"] = "P-2001"
        body["image"] = {"data_base64": _png_b64()}
        body["images"] = [body["image"]]
        body.pop("image" if body["kind"] == "text_image" else "images")
        if body["kind"] == "image":
            body.pop("text")
    for name in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), max_size=3, unique=True)):
        action = draw(st.sampled_from(["change", "change", "change", "drop", "any"]))
        if action == "drop":
            body.pop(name, None)
        else:
            strategy = FIELD_VALUES[name] if action == "change" else JSON_VALUES
            body[name] = draw(strategy)
    return json.dumps(body).encode()


def _check_one_result(pipeline: Pipeline, raw: bytes | None) -> None:
    result = asyncio.run(pipeline.handle(raw, SOURCE))
    assert isinstance(result, Output | DeadLetter | Parked)
    written = result.model_dump_json().encode()
    assert len(written) <= _budget()
    assert parse_result(written) == result  # a record the contracts accept
    if isinstance(result, DeadLetter):
        assert result.original_size == (len(raw) if raw is not None else 0)


@pytest.fixture(scope="module")
def any_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    """Both topologies' kinds in one pipeline (support_triage taking images too)."""
    topology = load_topology(TOPOLOGIES / "product_images.yaml")
    topology = topology.model_copy(update={"accepts": ["text", "image", "text_image"]})
    with ThreadPoolExecutor(2) as pool:
        yield Pipeline(
            topology,
            FakeModels(),
            ORGDATA,
            ImageLimits(file_root=tmp_path_factory.mktemp("images")),
            pool,
            "test:1",
            budgets=FakeBudgets({"thrifty": OverBudget("2026-01-02", 2.0, 1.0)}),
            passages=FakePassages(),
            collections=load_collections(),
        )


FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FAST
@given(raw=st.none() | st.binary(max_size=4_000))
def test_any_bytes_get_exactly_one_result(any_pipeline: Pipeline, raw: bytes | None) -> None:
    _check_one_result(any_pipeline, raw)


@FAST
@given(raw=JSON_VALUES.map(lambda value: json.dumps(value).encode()) | deep_json())
def test_any_json_gets_exactly_one_result(any_pipeline: Pipeline, raw: bytes) -> None:
    _check_one_result(any_pipeline, raw)


@FAST
@given(raw=events())
def test_any_event_gets_exactly_one_result(any_pipeline: Pipeline, raw: bytes) -> None:
    _check_one_result(any_pipeline, raw)


# --- the agent: what still escapes ends the worker, unacked ------------------------------


class Exited(BaseException):
    """Stands in for the end of the process."""


class FakeTopic:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[bytes | None, bytes]] = []
        self.headers: list[dict[str, bytes] | None] = []

    async def send(
        self, key: bytes | None, value: bytes, headers: dict[str, bytes] | None = None
    ) -> asyncio.Future[None]:
        if self.fail:
            raise RuntimeError("MessageSizeTooLargeError: the broker said no")
        self.sent.append((key, value))
        self.headers.append(headers)
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


class FakeMarks:
    """Answered marks in a dict, as `partition:offset`."""

    def __init__(self) -> None:
        self.marks: dict[str, int] = {}

    def seen(self, partition: int, offset: int) -> bool:
        return f"{partition}:{offset}" in self.marks

    async def mark(self, partition: int, offset: int) -> None:
        self.marks[f"{partition}:{offset}"] = 1


class FakeStream:
    """Yields its events; `resumed` counts how often the agent came back for the next one
    (where faust acks the previous event)."""

    def __init__(
        self, values: list[bytes | None], headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        self.values = values
        self.headers = headers or []  # every record's
        self.resumed = 0

    def as_stream(self) -> Any:
        return self

    async def events(self) -> AsyncIterator[Any]:
        for offset, value in enumerate(self.values):
            message = SimpleNamespace(
                topic="in",
                partition=3,
                offset=offset,
                key=b"k",
                timestamp=time.time(),
                headers=self.headers,
            )
            yield SimpleNamespace(value=value, message=message)
            self.resumed += 1


async def test_the_agent_publishes_one_result_per_event(make: PipelineFactory) -> None:
    outputs, dead = FakeTopic(), FakeTopic()
    answered = FakeMarks()
    body = app_module.agent_body(
        make(), answered, Metrics(), app_module._Sinks(outputs, dead, FakeTopic())
    )
    stream = FakeStream([_raw(), None, b"[" * 10_000])
    assert [x async for x in body(stream.as_stream())] == [None, None, None]
    assert len(outputs.sent) == 1 and len(dead.sent) == 2
    assert answered.marks == {"3:0": 1, "3:1": 1, "3:2": 1}


async def test_a_record_read_twice_at_once_is_answered_and_paid_once(
    make: PipelineFactory,
) -> None:
    """A rebalance can hand an agent instance a record that another instance is still
    answering: the copy waits for it and is skipped, without calling a model."""
    models, outputs, metrics, answered = (
        FakeModels(latency_s=0.05),
        FakeTopic(),
        Metrics(),
        FakeMarks(),
    )
    body = app_module.agent_body(
        make(models=models), answered, metrics, app_module._Sinks(outputs, FakeTopic(), FakeTopic())
    )

    async def drain(stream: FakeStream) -> list[None]:
        return [x async for x in body(stream.as_stream())]

    first, copy = await asyncio.gather(drain(FakeStream([_raw()])), drain(FakeStream([_raw()])))
    calls = {asked.call_id for asked in models.asked}
    assert len(models.asked) == len(calls) > 0  # every call of the event paid once
    assert len(outputs.sent) == 1 and answered.marks == {"3:0": 1}
    assert sorted([first, copy], key=len) == [[], [None]]
    labels = {"topology": "support_triage"}
    assert metrics.registry.get_sample_value("llmflow_record_copies_waited_total", labels) == 1
    assert metrics.registry.get_sample_value("llmflow_redeliveries_skipped_total", labels) == 1


async def test_a_copy_whose_first_was_cancelled_is_answered(make: PipelineFactory) -> None:
    """A rebalance may cancel the first copy; the waiting copy then answers the record."""
    models, outputs, answered = FakeModels(latency_s=0.2), FakeTopic(), FakeMarks()
    body = app_module.agent_body(
        make(models=models),
        answered,
        Metrics(),
        app_module._Sinks(outputs, FakeTopic(), FakeTopic()),
    )

    async def drain(stream: FakeStream) -> list[None]:
        return [x async for x in body(stream.as_stream())]

    first = asyncio.ensure_future(drain(FakeStream([_raw()])))
    await asyncio.sleep(0.05)  # the first copy is calling its models
    copy = asyncio.ensure_future(drain(FakeStream([_raw()])))
    await asyncio.sleep(0.05)
    first.cancel()
    assert await copy == [None]
    assert len(outputs.sent) == 1 and answered.marks == {"3:0": 1}
    with contextlib.suppress(asyncio.CancelledError):
        await first


async def test_an_output_goes_to_its_routes_too_and_each_is_counted(
    make: PipelineFactory,
) -> None:
    topology = load_topology(TOPOLOGIES / "support_triage.yaml")
    topology = topology.model_copy(
        update={
            "routes": [
                Route(name="all", topic="routed.all"),
                Route(name="never", topic="routed.never", when="event.text == ''"),
            ]
        }
    )
    outputs, routed, never, metrics = FakeTopic(), FakeTopic(), FakeTopic(), Metrics()
    sinks = app_module._Sinks(outputs, FakeTopic(), FakeTopic(), {"all": routed, "never": never})
    body = app_module.agent_body(make(topology), FakeMarks(), metrics, sinks)
    stream = FakeStream([_raw(), _raw(id="e-2"), None])
    assert [x async for x in body(stream.as_stream())] == [None, None, None]
    assert len(outputs.sent) == 2 and never.sent == []
    assert routed.sent == outputs.sent  # the same records, under the same keys
    assert routed.headers == [{"llmflow.route": b"all"}] * 2
    counted = metrics.registry.get_sample_value(
        "llmflow_routed_total", {"topology": "support_triage", "route": "all"}
    )
    assert counted == 2


async def test_what_escapes_the_agent_ends_the_worker_before_the_ack(
    make: PipelineFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    codes: list[int] = []

    def exit_now(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(os, "_exit", exit_now)
    answered = FakeMarks()
    sinks = app_module._Sinks(FakeTopic(fail=True), FakeTopic(fail=True), FakeTopic())
    body = app_module.agent_body(make(), answered, Metrics(), sinks)
    stream = FakeStream([_raw(), _raw(id="e-2")])
    with caplog.at_level(logging.CRITICAL), pytest.raises(Exited):
        async for _ in body(stream.as_stream()):
            pass
    assert codes == [app_module.EXIT_EVENT_UNHANDLED] == [70]
    assert stream.resumed == 0 and answered.marks == {}  # never came back for the next event
    assert "in[3]@0" in caplog.text and "MessageSizeTooLargeError" in caplog.text


def test_the_producer_takes_the_record_limit_from_settings(tmp_path: Path) -> None:
    settings = Settings(max_record_bytes=2_000_000, data_dir=tmp_path, app_id="limit-test")
    assert app_module.create_app(settings).conf.producer_max_request_size == 2_000_000
    assert Settings().max_record_bytes == DEFAULT_MAX_RECORD_BYTES == 1_000_000
