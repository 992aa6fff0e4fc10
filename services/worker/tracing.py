"""Traces across services: spans for each event, and the W3C trace context in Kafka headers.

Off unless the standard OpenTelemetry variables ask for it (`tracing_wanted`). Off, no span
is started, and the trace headers of each input record (`traceparent`, `tracestate`,
`baggage`) are copied to its results unchanged, so the traces of the services around the
worker stay joined. On, each event gets a span (a child of the trace in its record's
headers) with a child per stage, model call and publish, exported over OTLP/HTTP; its
results carry the context of their publish span.

faust opens no span of its own for a record (`faust.contrib.opentelemetry` is not used):
the agent opens the event's span (`event_span`), the pipeline its stages' spans.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from llmflow.errors import ConfigError
from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import ModelCallResult, Output
from llmflow.schemas.parked import Parked
from llmflow.topologies.spec import ModelCall, Topology

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger(__name__)

TRACER_NAME: Final = "llmflow.worker"
DEFAULT_SERVICE_NAME: Final = "llmflow-worker"
NO_TRACER: Final[Tracer] = trace.NoOpTracer()
"""Tracing off: no span is even started (`span`)."""
_OFF: Final = nullcontext(trace.INVALID_SPAN)  # stateless: shared by every caller

EXPORTERS: Final = ("otlp", "console")
KEY_MAX_CHARS: Final = 256  # a record key is the caller's bytes: clip what a span shows

Headers = Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None]
"""Kafka record headers as clients give them: (name, value) pairs, or a mapping."""


# --- on or off ----------------------------------------------------------------------------


def _listed(env: Mapping[str, str], name: str) -> list[str]:
    return [part.strip().lower() for part in env.get(name, "").split(",") if part.strip()]


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Whether the variables in `env` turn tracing on: `OTEL_TRACES_EXPORTER` names `otlp`
    or `console`, or (with no exporter named) an OTLP endpoint is set; and
    `OTEL_SDK_DISABLED` is not true. Unlike the SDK's, the default is off: a worker sends
    spans only where it is told to."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _listed(env, "OTEL_TRACES_EXPORTER")
    if exporters:
        unknown = sorted(set(exporters) - {*EXPORTERS, "none"})
        if unknown:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']}: {', '.join(unknown)} "
                f"not supported (choose from {', '.join(EXPORTERS)}, none)"
            )
        return any(name in EXPORTERS for name in exporters)
    endpoints = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return any(env.get(name, "").strip() for name in endpoints)


def _check_protocol(env: Mapping[str, str]) -> None:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol:
            if protocol != "http/protobuf":
                raise ConfigError(f"{name}={protocol}: only http/protobuf is supported")
            return  # the signal's own variable wins over the general one


def configure_tracing(env: Mapping[str, str] = os.environ) -> TracerProvider | None:
    """A tracer provider exporting as the OTEL_* variables say, or None when tracing is off.

    The SDK reads the rest of the standard variables itself: `OTEL_SERVICE_NAME` and
    `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_EXPORTER_OTLP_*` (endpoint,
    headers, timeout), `OTEL_BSP_*`. The global provider is left alone: the worker hands
    the tracer to what needs it. Shut the provider down to flush what is still queued."""
    if not tracing_wanted(env):
        return None
    # Imported only when on: the exporter brings protobuf along.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporters = _listed(env, "OTEL_TRACES_EXPORTER") or ["otlp"]
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler comes from the variables
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            _check_protocol(env)
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            continue  # "none" beside another exporter
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.warning(
        "tracing on: service %s, spans to %s",
        resource.attributes.get(SERVICE_NAME),
        ", ".join(name for name in exporters if name != "none"),
    )
    return provider


def tracer_of(provider: trace.TracerProvider | None) -> Tracer:
    """The worker's tracer from `provider`; the no-op tracer when there is none."""
    return NO_TRACER if provider is None else provider.get_tracer(TRACER_NAME)


def is_on(tracer: Tracer) -> bool:
    return not isinstance(tracer, trace.NoOpTracer)


# --- trace context in Kafka headers -------------------------------------------------------


def _items(headers: Headers | None) -> Iterable[tuple[str, bytes | None]]:
    if not headers:
        return ()
    return headers.items() if isinstance(headers, Mapping) else headers


class KafkaHeadersGetter(Getter[Headers]):
    """Reads a record's headers; values are bytes (a hostile one fails to parse, no more)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [v.decode("ascii", "replace") for k, v in _items(carrier) if k == key and v]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in _items(carrier)]


class KafkaHeadersSetter(Setter[MutableMapping[str, bytes]]):
    """Writes into the headers of a record to send (name -> bytes, as faust takes them)."""

    def set(self, carrier: MutableMapping[str, bytes], key: str, value: str) -> None:
        carrier[key] = value.encode("ascii", "replace")


GETTER: Final = KafkaHeadersGetter()
SETTER: Final = KafkaHeadersSetter()


def trace_headers(tracer: Tracer, incoming: Headers | None) -> dict[str, bytes]:
    """The trace headers a result record carries: the current span's context when tracing
    is on; when off, those of the input record (`incoming`), copied unchanged."""
    headers: dict[str, bytes] = {}
    if is_on(tracer):
        propagate.inject(headers, setter=SETTER)
        return headers
    fields = propagate.get_global_textmap().fields
    for name, value in _items(incoming):
        if value is not None and name in fields:
            headers[name] = value
    return headers


# --- spans --------------------------------------------------------------------------------


def span(tracer: Tracer, name: str, **options: Any) -> AbstractContextManager[Span]:
    """`tracer.start_as_current_span(name, **options)`; off, a context that does nothing
    (the no-op tracer's spans would still cost a context switch each)."""
    return tracer.start_as_current_span(name, **options) if is_on(tracer) else _OFF


def _key_text(key: bytes | None) -> str:
    text = (key or b"").decode("utf-8", "replace")
    return text if len(text) <= KEY_MAX_CHARS else text[: KEY_MAX_CHARS - 1] + "\u2026"


def event_span(tracer: Tracer, topology: Topology, message: Any) -> AbstractContextManager[Span]:
    """The span of one input record (a faust message), current inside: a child of the trace
    its headers carry, else the root of a new one. Off, the headers are not even parsed."""
    if not is_on(tracer):
        return _OFF
    parent = propagate.extract(message.headers, getter=GETTER)
    attributes = {
        "messaging.system": "kafka",
        "messaging.operation.name": "consume",
        "messaging.destination.name": message.topic,
        "messaging.destination.partition.id": str(message.partition),
        "messaging.kafka.offset": message.offset,
        "messaging.kafka.message.key": _key_text(message.key),
        "llmflow.topology": topology.name,
        "llmflow.topology.version": topology.version,
    }
    return tracer.start_as_current_span(
        f"consume {message.topic}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    )


def end_event(span: Span, result: Output | DeadLetter | Parked) -> None:
    """What became of the event; a dead letter sets the span's status to ERROR."""
    if not span.is_recording():
        return
    span.set_attribute("llmflow.result", result.record_type)
    if result.event_id is not None:
        span.set_attribute("llmflow.event.id", result.event_id)
    if isinstance(result, DeadLetter):
        span.set_attribute("llmflow.error.stage", result.stage)
        span.set_attribute("llmflow.error.kind", result.error_kind)
        span.set_status(Status(StatusCode.ERROR, f"{result.stage}: {result.error_kind}"))


def record_failure(exc: BaseException, letter: DeadLetter) -> None:
    """Why the event is dead-lettered: `exc` as an exception event of the current span (the
    event's, when the agent opened one), with the dead letter's message (clipped, and
    without the input a validation error would quote)."""
    span = trace.get_current_span()
    if span.is_recording():
        attributes = {
            "exception.message": letter.message,
            "llmflow.error.stage": letter.stage,
            "llmflow.error.kind": letter.error_kind,
        }
        span.record_exception(exc, attributes)


def publish_span(
    tracer: Tracer, result: Output | DeadLetter | Parked, incoming: Headers | None
) -> AbstractContextManager[dict[str, bytes]]:
    """The span of publishing an event's results; yields the trace headers every record of
    them carries (`trace_headers`)."""
    if not is_on(tracer):
        return nullcontext(trace_headers(tracer, incoming))
    return _publishing(tracer, result, incoming)


@contextmanager
def _publishing(
    tracer: Tracer, result: Output | DeadLetter | Parked, incoming: Headers | None
) -> Iterator[dict[str, bytes]]:
    with tracer.start_as_current_span(
        f"publish {result.record_type}", kind=SpanKind.PRODUCER
    ) as span:
        span.set_attribute("llmflow.result", result.record_type)
        if isinstance(result, Output) and result.routes:
            span.set_attribute("llmflow.routes", result.routes)
        yield trace_headers(tracer, incoming)


def model_span(tracer: Tracer, call: ModelCall, call_id: str) -> AbstractContextManager[Span]:
    """The span of one declared call, current inside (`end_call` completes it)."""
    if not is_on(tracer):
        return _OFF
    return tracer.start_as_current_span(
        f"model {call.name}",
        kind=SpanKind.CLIENT,
        attributes={
            "llmflow.call.name": call.name,
            "llmflow.call.id": call_id,
            "gen_ai.operation.name": "embeddings" if call.kind == "embedding" else "chat",
            "gen_ai.request.model": call.model,
            "llmflow.call.endpoint": call.endpoint,
        },
    )


def end_call(span: Span, result: ModelCallResult) -> None:
    """What the call cost and who answered: reused (paid for before) or paid now."""
    if not span.is_recording():
        return
    span.set_attributes(
        {
            "gen_ai.response.model": result.model,
            "llmflow.call.endpoint": result.endpoint,
            "gen_ai.usage.input_tokens": result.tokens_in,
            "gen_ai.usage.output_tokens": result.tokens_out,
            "llmflow.call.cost_usd": result.cost_usd,
            "llmflow.call.attempts": result.attempts,
            "llmflow.call.reused": result.reused,
            "llmflow.call.repaired": result.repaired,
        }
    )
