"""What tracing costs the worker: CPU time per event with tracing off, on (spans to an
in-memory exporter), and on as in production (batched, and encoded as OTLP protobuf, as
the exporter does before it sends), side by side.

    python -m dev.bench.tracing [--events 2000] [--rounds 6] [--out DIR]

Each event goes through the topology's agent as in the worker (event span, pipeline,
publish with trace headers) on support_triage: an org-data lookup, a retrieval with its
query embedding and three chat calls, so eight spans an event. Models, org data and topics
are instant fakes, so the pipeline's own CPU is the whole baseline: the ratio is an upper
bound of what tracing adds to a real event, whose model calls cost far more. CPU time is
the process's, so the batch processor's export thread counts too. The sides alternate
(A B C C B A ...) so drift of the machine lands on each.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from dev import PROJECT_ROOT
from dev.bench.report import Ratio, machine, make_ratio, print_report
from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.images.prepare import ImageLimits
from llmflow.services.orgdata.search import Hit, Mode
from llmflow.services.orgdata.store import OrgRecord
from llmflow.services.worker import app as app_module
from llmflow.services.worker import tracing
from llmflow.services.worker.metrics import Metrics
from llmflow.services.worker.pipeline import Pipeline
from llmflow.topologies.collections import load_collections
from llmflow.topologies.loader import load_topology
from llmflow.topologies.spec import ModelCall

SIDES = ("off", "on", "on_otlp")
TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- instant fakes ------------------------------------------------------------------------


class _Models:
    async def run(
        self,
        call: ModelCall,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
    ) -> ModelCallResult:
        answer: Any = f"answer to: {user[:40]}"
        if call.kind == "embedding":
            answer = [0.1] * (call.dimensions or 8)
        elif call.output_schema is not None:
            answer = {"category": "billing", "priority": "low", "sentiment": "negative"}
        return ModelCallResult(
            name=call.name,
            kind=call.kind,
            call_id=call_id,
            model=call.model,
            endpoint=call.endpoint,
            prompt_version=call.prompt.version,
            answer=answer,
            tokens_in=40,
            tokens_out=0 if call.kind == "embedding" else 20,
            latency_ms=1.0,
            cost_usd=0.0001,
        )


class _OrgData:
    def get(self, table: str, key: str) -> OrgRecord | None:
        return OrgRecord(table, key, "v1", 0, 7, {"name": "Harbor Lane Bakery", "tier": "pro"})


class _Passages:
    def search(
        self,
        collection: str,
        query: str,
        vector: npt.NDArray[np.float32] | None,
        *,
        top_k: int,
        mode: Mode,
        tenant: str | None,
        filters: Mapping[str, str],
    ) -> list[Hit]:
        record = {"id": "POL-1", "title": "Refunds"}
        return [Hit(11, collection, "POL-1", 0, "Refunds within 30 days.", 0.5, "v1", 3, record)]


class _Topic:
    async def send(
        self, key: bytes | None, value: bytes, headers: dict[str, bytes] | None = None
    ) -> asyncio.Future[None]:
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered


class _Marks:
    def seen(self, partition: int, offset: int) -> bool:
        return False

    async def mark(self, partition: int, offset: int) -> None:
        return None


@dataclass(frozen=True, slots=True)
class _Message:
    offset: int
    topic: str = "support.tickets"
    partition: int = 0
    key: bytes = b"C-1001"
    timestamp: float = field(default_factory=time.time)
    headers: tuple[tuple[str, bytes], ...] = (("traceparent", TRACEPARENT),)


@dataclass(frozen=True, slots=True)
class _Event:
    value: bytes
    message: _Message


class _Stream:
    def __init__(self, count: int) -> None:
        self.count = count

    async def events(self) -> AsyncIterator[_Event]:
        for n in range(self.count):
            value = json.dumps(
                {
                    "id": f"e-{n}",
                    "kind": "text",
                    "key": "C-1001",
                    "timestamp": "2026-01-02T03:04:05Z",
                    "source": "helpdesk",
                    "text": f"My invoice {n} was charged twice and I need a refund today",
                }
            ).encode()
            yield _Event(value, _Message(n))


class _OtlpEncoding(SpanExporter):
    """Encodes each span as the OTLP/HTTP exporter would, and sends nothing."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def clear(self) -> None:
        self.spans = 0

    def exported(self) -> int:
        return self.spans


class _Memory(InMemorySpanExporter):
    def exported(self) -> int:
        return len(self.get_finished_spans())


# --- the measurement ----------------------------------------------------------------------


def _tracer(side: str) -> tuple[Tracer, TracerProvider | None, _Memory | _OtlpEncoding | None]:
    if side == "off":
        return tracing.NO_TRACER, None, None
    provider = TracerProvider()
    exporter: _Memory | _OtlpEncoding
    if side == "on":
        exporter = _Memory()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:  # the worker's processor; a queue large enough that no span is dropped
        exporter = _OtlpEncoding()
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 20))
    return tracing.tracer_of(provider), provider, exporter


def cpu_per_event_us(side: str, events: int, executor: ThreadPoolExecutor) -> float:
    """CPU microseconds per event for `events` events through the agent, on one side."""
    tracer, provider, exporter = _tracer(side)
    topology = load_topology(PROJECT_ROOT / "topologies" / "support_triage.yaml")
    pipeline = Pipeline(
        topology,
        _Models(),
        _OrgData(),
        ImageLimits(),
        executor,
        "bench:1",
        passages=_Passages(),
        collections=load_collections(),
        tracer=tracer,
    )
    sinks = app_module._Sinks(_Topic(), _Topic(), _Topic())
    body = app_module.agent_body(pipeline, _Marks(), Metrics(), sinks)

    async def drain(stream: _Stream) -> None:
        async for _ in body(stream):  # type: ignore[arg-type]  # a stream in shape only
            pass

    async def measure() -> float:
        await drain(_Stream(50))  # warm up: caches, first-use imports
        if provider is not None and exporter is not None:
            provider.force_flush()
            exporter.clear()
        gc.collect()
        started = time.process_time()
        await drain(_Stream(events))
        if provider is not None:
            provider.force_flush()  # the spans still queued are part of the cost
        return (time.process_time() - started) / events * 1e6

    try:
        spent = asyncio.run(measure())
        if exporter is not None:
            assert exporter.exported() == 8 * events, "eight spans an event, none dropped"
        return spent
    finally:
        if provider is not None:
            provider.shutdown()


def tracing_overhead(events: int, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {side: [] for side in SIDES}
    began = time.perf_counter()
    with ThreadPoolExecutor(2) as executor:
        for round_ in range(rounds):
            order = SIDES if round_ % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                runs[side].append(cpu_per_event_us(side, events, executor))
                print(f"round {round_ + 1}/{rounds} {side}: {runs[side][-1]:.1f} µs", flush=True)
    medians = {side: statistics.median(values) for side, values in runs.items()}
    ratios: list[Ratio] = [
        make_ratio(
            "CPU per event, on (in-memory) / off",
            medians["on"],
            medians["off"],
            unit="µs",
            better="lower",
        ),
        make_ratio(
            "CPU per event, on (batched, OTLP-encoded) / off",
            medians["on_otlp"],
            medians["off"],
            unit="µs",
            better="lower",
        ),
    ]
    added = medians["on"] - medians["off"]
    return {
        "params": {"events": events, "rounds": rounds, "spans_per_event": 8},
        "median_us": medians,
        "runs_us": runs,
        "elapsed_s": time.perf_counter() - began,
        "note": (
            f"tracing on adds {added:.0f} µs of CPU per event ({added / 8:.1f} µs a span) "
            "with instant fake models: an upper bound of its relative cost."
        ),
        "ratios": ratios,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dev.bench.tracing",
        description="CPU per event with tracing off and on, side by side.",
    )
    parser.add_argument("--events", type=int, default=2000, help="events per side and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, help="also write results.json, .md and chart.png")
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1:
        parser.error("--events and --rounds must be >= 1")
    results = {
        "machine": machine(),
        "scenarios": {"tracing": tracing_overhead(args.events, args.rounds)},
    }
    print_report(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
