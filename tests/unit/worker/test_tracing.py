"""Tracing: an event's spans under the trace of its input record's headers, the trace context
in the headers of every result, and the variables that turn it on. Spans go to an in-memory
exporter of a provider of each test's own (the global provider is never set)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer

from llmflow.errors import ConfigError
from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import Output
from llmflow.services.images.prepare import ImageLimits
from llmflow.services.models.client import ModelCallError, call_id
from llmflow.services.worker import app as app_module
from llmflow.services.worker import tracing
from llmflow.services.worker.bootstrap import bootstrap
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.pipeline import Pipeline
from llmflow.services.worker.settings import Settings
from llmflow.services.worker.shadow import SHADOW_HEADER, ShadowRun
from llmflow.topologies import Topology, load_topology
from llmflow.topologies.collections import load_collections
from llmflow.topologies.spec import Route
from tests.unit.worker.test_bootstrap import FakeEnsure, no_org_data
from tests.unit.worker.test_error_boundary import FakeMarks, FakeStream, FakeTopic, _raw
from tests.unit.worker.test_pipeline import ORGDATA, FakeModels, FakePaid, FakePassages

TOPOLOGIES = Path(__file__).resolve().parents[3] / "topologies"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
UPSTREAM_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{UPSTREAM_SPAN}-01".encode()
INCOMING = [("traceparent", TRACEPARENT), ("tracestate", b"upstream=1"), ("other", b"x")]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[Tracer]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracing.tracer_of(provider)
    provider.shutdown()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _topology() -> Topology:
    """support_triage with one route every output takes."""
    topology = load_topology(TOPOLOGIES / "support_triage.yaml")
    return topology.model_copy(update={"routes": [Route(name="all", topic="routed.all")]})


class Worker:
    """One topology's agent on fake topics, fed a stream of records."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.outputs, self.dead, self.routed = FakeTopic(), FakeTopic(), FakeTopic()
        sinks = app_module._Sinks(self.outputs, self.dead, FakeTopic(), {"all": self.routed})
        self.body = app_module.agent_body(pipeline, FakeMarks(), Metrics(), sinks)

    async def run(self, values: list[bytes | None], headers: Any = None) -> None:
        stream = FakeStream(values, headers)
        assert [x async for x in self.body(stream.as_stream())] == [None] * len(values)


WorkerFactory = Callable[..., Worker]


@pytest.fixture
def worker(executor: ThreadPoolExecutor) -> WorkerFactory:
    def make(
        tracer: Tracer = tracing.NO_TRACER,
        models: FakeModels | None = None,
        paid: FakePaid | None = None,
    ) -> Worker:
        pipeline = Pipeline(
            _topology(),
            models or FakeModels(),
            ORGDATA,
            ImageLimits(),
            executor,
            "test:1",
            paid=paid,
            passages=FakePassages(),
            collections=load_collections(),
            tracer=tracer,
        )
        return Worker(pipeline)

    return make


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def _children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> set[str]:
    assert parent.context is not None
    return {s.name for s in spans if s.parent and s.parent.span_id == parent.context.span_id}


def _traceparent(headers: dict[str, bytes] | None) -> tuple[str, str]:
    """(trace id, parent span id) of a record's `traceparent`."""
    assert headers is not None
    version, trace_id, span_id, flags = headers["traceparent"].decode().split("-")
    assert version == "00" and int(flags, 16) & 1  # sampled
    return trace_id, span_id


# --- spans of an event -------------------------------------------------------------------


async def test_an_event_is_one_span_under_the_upstream_trace_with_a_child_per_step(
    worker: WorkerFactory, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    running = worker(tracer)
    await running.run([_raw()], INCOMING)
    spans = exporter.get_finished_spans()
    named = _by_name(spans)
    root = named["consume in"]
    assert root.kind is SpanKind.CONSUMER and root.context is not None
    # The event's span continues the trace of the record's headers.
    assert root.parent is not None and root.parent.is_remote
    assert f"{root.parent.span_id:016x}" == UPSTREAM_SPAN
    assert {f"{span.context.trace_id:032x}" for span in spans if span.context} == {TRACE_ID}
    assert [span for span in spans if span.parent is None or span.parent.is_remote] == [root]
    assert root.status.status_code is StatusCode.UNSET
    assert dict(root.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "consume",
        "messaging.destination.name": "in",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 0,
        "messaging.kafka.message.key": "k",
        "llmflow.topology": "support_triage",
        "llmflow.topology.version": "2.0.1",
        "llmflow.result": "output",
        "llmflow.event.id": "e-1",
    }
    assert _children(spans, root) == {
        "enrich",
        "retrieve",
        "model classify",
        "model summarize",
        "model draft_reply",
        "publish output",
    }
    assert _children(spans, named["retrieve"]) == {"model retrieval"}  # the query's embedding
    assert named["enrich"].attributes == {
        "llmflow.orgdata.table": "customers",
        "llmflow.orgdata.found": True,
    }

    (value,) = [value for _, value in running.outputs.sent]
    output = Output.model_validate_json(value)
    classify = named["model classify"]
    assert classify.kind is SpanKind.CLIENT
    assert dict(classify.attributes or {}) == {
        "llmflow.call.name": "classify",
        "llmflow.call.id": output.call("classify").call_id,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini",
        "llmflow.call.endpoint": "default",
        "gen_ai.usage.input_tokens": output.call("classify").tokens_in,
        "gen_ai.usage.output_tokens": 5,
        "llmflow.call.cost_usd": 0.001,
        "llmflow.call.attempts": 1,
        "llmflow.call.reused": False,
        "llmflow.call.repaired": False,
    }
    assert output.call("classify").call_id == call_id(
        "e-1", running.pipeline.topology, running.pipeline.topology.calls[0]
    )
    assert named["model retrieval"].attributes is not None
    assert named["model retrieval"].attributes["gen_ai.operation.name"] == "embeddings"
    publish = named["publish output"]
    assert publish.kind is SpanKind.PRODUCER and publish.context is not None
    assert dict(publish.attributes or {}) == {
        "llmflow.result": "output",
        "llmflow.routes": ("all",),
    }

    # The output and its routed copy carry the trace on, from the publish span.
    for headers in (running.outputs.headers[0], running.routed.headers[0]):
        assert _traceparent(headers) == (TRACE_ID, f"{publish.context.span_id:016x}")
        assert headers is not None and headers["tracestate"] == b"upstream=1"
        assert "other" not in headers
    assert running.routed.headers[0] is not None
    assert running.routed.headers[0]["llmflow.route"] == b"all"


async def test_an_answer_paid_for_before_is_a_reused_call_span(
    worker: WorkerFactory, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    running = worker(tracer, paid=FakePaid())
    await running.run([_raw(), _raw()])  # the same event twice: its answers are paid once
    calls = [s for s in exporter.get_finished_spans() if s.name == "model summarize"]
    assert [s.attributes and s.attributes["llmflow.call.reused"] for s in calls] == [False, True]
    assert [s.attributes and s.attributes["llmflow.call.attempts"] for s in calls] == [1, 0]


async def test_an_event_without_a_trace_starts_one_its_results_carry(
    worker: WorkerFactory, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    running = worker(tracer)
    await running.run([_raw()])
    root = _by_name(exporter.get_finished_spans())["consume in"]
    assert root.parent is None and root.context is not None
    trace_id, _ = _traceparent(running.outputs.headers[0])
    assert trace_id == f"{root.context.trace_id:032x}"


async def test_a_dead_lettered_event_has_an_error_span_and_its_letter_carries_the_trace(
    worker: WorkerFactory, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    refused = ModelCallError("summarize", "http_400", "refused", transient=False, attempts=1)
    running = worker(tracer, FakeModels(fail={"summarize": refused}))
    await running.run([_raw()], INCOMING)
    named = _by_name(exporter.get_finished_spans())
    root = named["consume in"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "model: http_400"
    assert root.attributes is not None and root.attributes["llmflow.result"] == "dead_letter"
    assert root.attributes["llmflow.error.stage"] == "model"
    (event,) = [e for e in root.events if e.name == "exception"]
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "llmflow.services.models.client.ModelCallError"
    assert event.attributes["exception.message"] == "call 'summarize': refused"
    assert event.attributes["llmflow.error.kind"] == "http_400"
    # The call that failed says so too.
    assert named["model summarize"].status.status_code is StatusCode.ERROR
    assert "publish dead_letter" in named
    (headers,) = running.dead.headers
    assert _traceparent(headers)[0] == TRACE_ID
    assert headers is not None and headers["llmflow.error.kind"] == b"http_400"
    assert running.outputs.sent == []


async def test_records_that_break_the_contract_get_error_spans_too(
    worker: WorkerFactory, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    running = worker(tracer)
    await running.run([None, b"[" * 10_000])
    roots = [s for s in exporter.get_finished_spans() if s.name == "consume in"]
    assert [root.status.description for root in roots] == ["decode: tombstone", "decode: not_json"]
    assert all(root.status.status_code is StatusCode.ERROR for root in roots)
    assert len(running.dead.sent) == 2


async def test_an_event_without_its_record_says_so_on_the_enrich_span(
    worker: WorkerFactory, tracer: Tracer, exporter: InMemorySpanExporter
) -> None:
    running = worker(tracer)
    await running.run([_raw(key="C-404")])  # answered without a record (not required)
    enrich = _by_name(exporter.get_finished_spans())["enrich"]
    assert enrich.attributes is not None and enrich.attributes["llmflow.orgdata.found"] is False


# --- tracing off --------------------------------------------------------------------------


async def test_off_nothing_is_recorded_and_the_trace_headers_pass_through(
    worker: WorkerFactory,
) -> None:
    off = tracing.tracer_of(tracing.configure_tracing({}))
    assert off is tracing.NO_TRACER and not tracing.is_on(off)
    with off.start_as_current_span("x") as span:
        assert not span.is_recording()
    running = worker(off)
    await running.run([_raw(), None], INCOMING)
    # The global provider was not set, by the worker nor by the tests.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    passed = {"traceparent": TRACEPARENT, "tracestate": b"upstream=1"}
    assert running.outputs.headers == [passed]
    assert running.routed.headers == [{**passed, "llmflow.route": b"all"}]
    (letter,) = running.dead.headers
    assert letter is not None and letter["traceparent"] == TRACEPARENT
    assert DeadLetter.model_validate_json(running.dead.sent[0][1]).error_kind == "tombstone"


async def test_off_a_record_without_trace_headers_gets_none(worker: WorkerFactory) -> None:
    running = worker()
    await running.run([_raw()])
    assert running.outputs.headers == [None]
    assert running.routed.headers == [{"llmflow.route": b"all"}]


# --- headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [INCOMING, dict(INCOMING), tuple(INCOMING), [("x", None), *INCOMING]],
    ids=["list", "mapping", "tuple", "null-value"],
)
def test_the_trace_is_read_from_kafka_headers_in_any_shape(headers: Any) -> None:
    context = propagate.extract(headers, getter=tracing.GETTER)
    span_context = trace.get_current_span(context).get_span_context()
    assert f"{span_context.trace_id:032x}" == TRACE_ID and span_context.is_remote
    assert span_context.trace_state.get("upstream") == "1"


@pytest.mark.parametrize(
    "value", [b"\xff\xfe garbage", b"00-zz-yy-01", b"", None], ids=["bytes", "bad", "empty", "null"]
)
def test_a_hostile_traceparent_is_ignored(value: bytes | None) -> None:
    context = propagate.extract([("traceparent", value)], getter=tracing.GETTER)
    assert not trace.get_current_span(context).get_span_context().is_valid


def test_the_setter_writes_bytes(tracer: Tracer) -> None:
    with tracer.start_as_current_span("x") as span:
        headers = tracing.trace_headers(tracer, None)
    assert _traceparent(headers) == (
        f"{span.get_span_context().trace_id:032x}",
        f"{span.get_span_context().span_id:016x}",
    )


# --- on or off: the OTEL_* variables ------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "workers", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_tracing_is_off_unless_the_variables_ask_for_it(env: dict[str, str], wanted: bool) -> None:
    assert tracing.tracing_wanted(env) is wanted


def test_an_exporter_not_supported_is_named() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER=zipkin: zipkin not supported"):
        tracing.tracing_wanted({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc"):
        tracing.configure_tracing(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        )


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "OTLPSpanExporter"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "ConsoleSpanExporter"),
    ],
)
def test_on_the_provider_exports_as_the_variables_say(
    env: dict[str, str], exporter: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the SDK reads the rest of them itself
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = tracing.configure_tracing(env)
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "llmflow-worker"
        processors: Any = provider._active_span_processor._span_processors
        assert [type(p.span_exporter).__name__ for p in processors] == [exporter]
        assert tracing.is_on(tracing.tracer_of(provider))
    finally:
        provider.shutdown()


def test_the_service_name_comes_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "triage-workers")
    provider = tracing.configure_tracing({"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "triage-workers"
    finally:
        provider.shutdown()


async def test_a_shadow_has_a_span_of_its_own_in_the_live_events_trace(
    tracer: Tracer, exporter: InMemorySpanExporter, executor: ThreadPoolExecutor
) -> None:
    def pipeline(topology: Topology, models: FakeModels) -> Pipeline:
        return Pipeline(
            topology,
            models,
            ORGDATA,
            ImageLimits(),
            executor,
            "test:1",
            passages=FakePassages(),
            collections=load_collections(),
            tracer=tracer,
        )

    refused = ModelCallError("classify", "http_400", "refused", transient=False)
    candidate = load_topology(TOPOLOGIES / "candidates" / "support_triage.yaml")
    sink = FakeTopic()
    shadow = ShadowRun(
        pipeline(candidate, FakeModels(fail={"classify": refused})), sink, 1.0, None, Metrics()
    )
    outputs = FakeTopic()
    sinks = app_module._Sinks(outputs, FakeTopic(), FakeTopic())
    live = pipeline(load_topology(TOPOLOGIES / "support_triage.yaml"), FakeModels())
    body = app_module.agent_body(live, FakeMarks(), Metrics(), sinks, shadow=shadow)
    async for _ in body(FakeStream([_raw()], INCOMING).as_stream()):
        pass
    await shadow.drain()
    spans = exporter.get_finished_spans()
    root = next(span for span in spans if span.name == "consume in")
    shadowed = next(span for span in spans if span.name == "shadow support_triage")
    # The candidate's dead letter is the shadow's failure, not the live event's.
    assert root.status.status_code is StatusCode.UNSET
    assert shadowed.status.status_code is StatusCode.ERROR
    assert "shadow support_triage" in _children(spans, root)
    assert "model classify" in _children(spans, shadowed)
    assert _traceparent(sink.headers[0])[0] == TRACE_ID
    assert sink.headers[0] is not None and sink.headers[0][SHADOW_HEADER] == b"2.1.0"


def test_the_worker_names_a_tracing_variable_it_cannot_follow_before_it_starts(
    project_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    ensure = FakeEnsure()
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        bootstrap(
            settings,
            [project_root / "topologies" / "support_triage.yaml"],
            ensure=ensure,
            org=no_org_data,
        )
    assert ensure.calls == []  # no topic created, nothing opened
