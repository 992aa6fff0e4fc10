"""One event in, one output, one dead letter or one parked event out. Knows nothing of Kafka.

Stages: decode/validate the contract -> route by kind -> check the tenant's budget
-> prepare images (thread pool) -> look up org data -> retrieve passages (the query's
embedding is a model call; the search runs in a thread) -> render prompts -> run every
model call concurrently (answers paid for before are reused) -> merge.
Every failure becomes a dead letter naming its stage; nothing escapes as an exception
(but `asyncio.CancelledError`): the worker would lose the event otherwise. An unexpected
exception becomes an `internal_error` dead letter, so a bug costs one event, not the worker.
One failure is not the event's: a model endpoint that is down. That raises `EndpointDown`
(carrying the dead letter the event would get), and the worker waits for the endpoint.
Every result fits in one Kafka record (`max_record_bytes`): a dead letter carries the event's
original bytes only while it stays under that size.
Model calls, org data, paid answers and budgets come in through the protocols of `ports`.
With a tracer, each stage (images, org data, retrieval, each model call) has its span, and a
failure is recorded on the current span, the event's (see `tracing`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, TypeVar

import numpy as np
import pydantic_core
from jinja2 import TemplateError
from opentelemetry.trace import Tracer
from pydantic import ValidationError

from llmflow.errors import LlmflowError
from llmflow.schemas.dead_letter import DeadLetter, Stage
from llmflow.schemas.events import AnyEvent, ImageRef, event_images, parse_event
from llmflow.schemas.outputs import (
    ImageInfo,
    ModelCallResult,
    OrgRecordRef,
    Output,
    Retrieved,
    RetrievedPassage,
    SkippedCall,
    Totals,
)
from llmflow.schemas.parked import Parked
from llmflow.services.images.fetch import decode_inline, load_image_bytes
from llmflow.services.images.prepare import ImageError, ImageLimits, PreparedImage, prepare_image
from llmflow.services.models.client import ModelCallError, call_id
from llmflow.services.orgdata.store import OrgDataError, OrgRecord
from llmflow.services.worker import tracing
from llmflow.services.worker.ports import (
    Budgets,
    ModelRunner,
    OrgData,
    OverBudget,
    PaidCalls,
    Passages,
)
from llmflow.topologies.collections import Collection
from llmflow.topologies.prompts import holds, render
from llmflow.topologies.spec import ModelCall, Prompt, Topology

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORD_BYTES: Final = 1_000_000
"""The producer's default max request size (and a little under the broker's default)."""
RECORD_RESERVE_BYTES: Final = 4096
"""Room a record needs besides its key and value: batch framing and headers (aiokafka
counts under 100 bytes of framing; the worker's headers take a few dozen)."""
MESSAGE_MAX_CHARS: Final = 2000
"""Longest message a dead letter carries: validation errors can quote hostile input."""
KIND_MAX_CHARS: Final = 200
EVENT_ID_MAX_CHARS: Final = 128  # the event contract's limit


@dataclass(frozen=True, slots=True)
class SourceMeta:
    """Where the raw event came from, for dead letters."""

    topic: str
    partition: int
    offset: int
    key_size: int = 0
    """Bytes of the record's key: results are published under the same key."""


Result = Output | DeadLetter | Parked
# The results that may carry the event's original bytes.
_Carrier = TypeVar("_Carrier", DeadLetter, Parked)


class EndpointDown(LlmflowError):
    """A model endpoint the event needs is down (`endpoints`: the ones its call tried).
    Not the event's fault: the caller waits and retries it; `dead_letter` is for a caller
    that has waited long enough."""

    def __init__(self, reason: str, endpoints: tuple[str, ...], dead_letter: DeadLetter) -> None:
        super().__init__(reason)
        self.reason = reason
        self.endpoints = endpoints
        self.dead_letter = dead_letter


class StageFailure(Exception):
    """Internal: carries a failure to the single place that turns it into a dead letter."""

    def __init__(self, stage: Stage, kind: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.kind = kind
        self.message = message


def _query_call(topology: Topology, collections: Mapping[str, Collection]) -> ModelCall | None:
    """The embedding call of the topology's retrieval query (None: no query is embedded).
    Named `retrieval` in the pay-once key; it is not one of the topology's `calls`."""
    spec = topology.retrieval
    if spec is None or spec.mode == "keyword":
        return None
    collection = collections.get(spec.collection)
    if collection is None:
        raise LlmflowError(
            f"topology {topology.name}: no document collection {spec.collection!r} "
            "(declared in LLMFLOW_COLLECTIONS_FILE)"
        )
    embedding = collection.embedding
    return ModelCall(
        name="retrieval",
        kind="embedding",
        model=embedding.model,
        endpoint=embedding.endpoint,
        dimensions=embedding.dimensions,
        prompt=Prompt(version=f"query-{spec.version}", user=spec.query),
    )


def _now() -> datetime:
    return datetime.now(UTC)


class _Progress:
    """The stage an event has reached, to name it when something unexpected goes wrong."""

    __slots__ = ("stage",)

    def __init__(self) -> None:
        self.stage: Stage = "decode"


def _event_id_of(raw: bytes) -> str | None:
    """Best-effort id of valid JSON that broke the contract (only on the failure path).

    Safe for hostile bytes: pydantic's parser stops at a fixed nesting depth with a
    ValueError (`json.loads` recurses until RecursionError), and an id the contract would
    not take (not a string, empty, too long) is not taken either."""
    try:
        data = pydantic_core.from_json(raw, cache_strings=False)
    except Exception:  # the failure path must not fail: no id then
        return None
    value = data.get("id") if isinstance(data, dict) else None
    if isinstance(value, str) and 0 < len(value) <= EVENT_ID_MAX_CHARS:
        return _clip(value, EVENT_ID_MAX_CHARS)
    return None


def _clip(text: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """At most `limit` characters, each encodable as UTF-8 (a lone surrogate becomes '?')."""
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text.encode("utf-8", "replace").decode("utf-8")


def _exception_text(exc: BaseException) -> str:
    """`ExceptionClass: text` (the class alone when the text is empty or unprintable)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _reported(exc: BaseException) -> BaseException:
    """The exception to report from a task group's: a StageFailure first, else the first."""
    while isinstance(exc, BaseExceptionGroup):
        failures, _ = exc.split(StageFailure)
        exc = (failures or exc).exceptions[0]
    return exc


def _serialized_size(result: Result) -> int:
    return len(result.model_dump_json().encode())


def _b64_size(size: int) -> int:
    return 4 * ((size + 2) // 3)


def _provenance(raw: bytes | None, source: SourceMeta) -> dict[str, Any]:
    """Where a dead-lettered or parked event came from, and which bytes it was; the bytes
    themselves (`original_b64`) are added by `Pipeline._with_original` while they fit."""
    original = raw or b""
    return {
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "original_b64": None,
        "original_sha256": hashlib.sha256(original).hexdigest(),
        "original_size": len(original),
    }


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        # A location can be a key of the hostile input: clip each before joining.
        where = ".".join(_clip(str(p), 100) for p in error["loc"]) or "(event)"
        parts.append(f"{where}: {_clip(error['msg'], 300)}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class Pipeline:
    """Runs one topology for one event at a time; many `handle` calls may run concurrently."""

    def __init__(
        self,
        topology: Topology,
        models: ModelRunner,
        orgdata: OrgData | None,
        image_limits: ImageLimits,
        executor: Executor,
        worker_id: str,
        paid: PaidCalls | None = None,
        budgets: Budgets | None = None,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        passages: Passages | None = None,
        collections: Mapping[str, Collection] | None = None,
        tracer: Tracer = tracing.NO_TRACER,
    ) -> None:
        self.topology = topology
        self.tracer = tracer
        if topology.retrieval is not None and passages is None:
            raise LlmflowError(f"topology {topology.name} retrieves: the pipeline needs passages")
        self._passages = passages
        self._query_call = _query_call(topology, collections or {})
        self._order = topology.order  # sorted once, not per event
        # Largest record a result may become (key, value and framing): the producer's max
        # request size, which the app sets when it adds the topology's agent.
        self.max_record_bytes = max_record_bytes
        self._paid = paid
        self._budgets = budgets
        self._models = models
        self._orgdata = orgdata
        self._limits = image_limits
        self._executor = executor
        self._worker_id = worker_id

    async def handle(self, raw: bytes | None, source: SourceMeta) -> Result:
        """The one result for the record value `raw` (None for a tombstone).

        The error boundary of an event: whatever goes wrong becomes a dead letter naming
        the stage, and nothing but `asyncio.CancelledError` (and other BaseExceptions)
        escapes. The result always fits in `max_record_bytes`."""
        received = _now()
        started = time.perf_counter()
        progress = _Progress()
        event: AnyEvent | None = None
        try:
            if raw is None:
                raise StageFailure("decode", "tombstone", "the record has no value (a tombstone)")
            event = self._decode(raw)
            progress.stage = "route"  # the budget check too: it chooses answer or parking
            self._route(event)
            tenant = event.tenant or event.key
            verdict = self._budgets.over_budget(tenant) if self._budgets else None
            result: Output | Parked
            if verdict is not None:
                result = self._park(event, tenant, verdict, raw, source)
            else:
                result = await self._answer(event, tenant, source, received, started, progress)
            progress.stage = "output"
            self._check_fits(result, source)
            return result
        except Exception as exc:  # CancelledError is a BaseException: it goes through
            reported = _reported(exc)
            if isinstance(reported, StageFailure):
                letter = self._dead_letter(
                    raw, source, event, reported.stage, reported.kind, reported.message
                )
                cause = reported.__cause__
                if isinstance(cause, ModelCallError) and cause.endpoint_down:
                    raise EndpointDown(reported.message, cause.endpoints, letter) from None
                tracing.record_failure(cause or reported, letter)
                return letter
            log.error(
                "%s: unexpected error at stage %s for %s[%d]@%d",
                self.topology.name,
                progress.stage,
                source.topic,
                source.partition,
                source.offset,
                exc_info=exc,
            )
            letter = self._dead_letter(
                raw, source, event, progress.stage, "internal_error", _exception_text(reported)
            )
            tracing.record_failure(reported, letter)
            return letter

    def _record_budget(self, source: SourceMeta) -> int:
        """Bytes a result's serialized value may take."""
        return self.max_record_bytes - RECORD_RESERVE_BYTES - source.key_size

    def _with_original(self, result: _Carrier, raw: bytes | None, source: SourceMeta) -> _Carrier:
        """`result` with the original bytes, while it stays a record Kafka takes; else as is
        (`original_sha256`, `original_size` and the source offset still name the event)."""
        if not raw:
            return result
        # Base64 makes the bytes 4/3 as large, and `null` (4 bytes) gives way to `"..."`.
        with_original = _serialized_size(result) - 4 + 2 + _b64_size(len(raw))
        if with_original > self._record_budget(source):
            return result
        return result.model_copy(update={"original_b64": base64.b64encode(raw).decode("ascii")})

    def _check_fits(self, result: Output | Parked, source: SourceMeta) -> None:
        size, budget = _serialized_size(result), self._record_budget(source)
        if size > budget:
            raise StageFailure(
                "output",
                "record_too_large",
                f"the {result.record_type} record would take {size} bytes, over the "
                f"{budget} bytes a record may take (LLMFLOW_MAX_RECORD_BYTES)",
            )

    def _dead_letter(
        self,
        raw: bytes | None,
        source: SourceMeta,
        event: AnyEvent | None,
        stage: Stage,
        kind: str,
        message: str,
    ) -> DeadLetter:
        """The failure path: it must not fail, whatever `raw` holds."""
        fields: dict[str, Any] = {
            "topology": self.topology.name,
            "topology_version": self.topology.version,
            "stage": stage,
            "failed_at": _now(),
            **_provenance(raw, source),
        }
        try:
            event_id: str | None
            if event is not None:
                event_id = event.id
            elif stage == "validate" and raw is not None:
                event_id = _event_id_of(raw)  # JSON, or it would have failed to decode
            else:
                event_id = None
            letter = DeadLetter(
                event_id=event_id,
                error_kind=_clip(kind, KIND_MAX_CHARS),
                message=_clip(message),
                **fields,
            )
            return self._with_original(letter, raw, source)
        except Exception:  # a bug describing the failure: still a dead letter, a bare one
            log.exception("%s: could not describe a failure at stage %s", self.topology.name, stage)
            return DeadLetter(
                event_id=None,
                error_kind="internal_error",
                message="the failure could not be described (see the worker's log)",
                **fields,
            )

    def _park(
        self, event: AnyEvent, tenant: str, verdict: OverBudget, raw: bytes, source: SourceMeta
    ) -> Parked:
        parked = Parked(
            event_id=event.id,
            tenant=tenant,
            topology=self.topology.name,
            topology_version=self.topology.version,
            reason="budget",
            message=(
                f"tenant {tenant!r} spent {verdict.spent_usd:.6f} USD of its "
                f"{verdict.budget_usd:.6f} USD budget for {verdict.period}"
            ),
            period=verdict.period,
            spent_usd=verdict.spent_usd,
            budget_usd=verdict.budget_usd,
            parked_at=_now(),
            **_provenance(raw, source),
        )
        return self._with_original(parked, raw, source)

    def _decode(self, raw: bytes) -> AnyEvent:
        try:
            return parse_event(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            if any(error["type"] == "json_invalid" for error in errors):
                raise StageFailure("decode", "not_json", _describe(exc)) from exc
            raise StageFailure("validate", "contract_violation", _describe(exc)) from exc

    def _route(self, event: AnyEvent) -> None:
        if event.kind not in self.topology.accepts:
            raise StageFailure(
                "route",
                "kind_not_accepted",
                f"{self.topology.name} accepts {self.topology.accepts}, got {event.kind!r}",
            )

    async def _answer(
        self,
        event: AnyEvent,
        tenant: str,
        source: SourceMeta,
        received: datetime,
        started: float,
        progress: _Progress,
    ) -> Output:
        progress.stage = "image"
        images = await self._prepare_images(event_images(event))
        image_urls = [image.data_url() for image in images]
        progress.stage = "enrich"
        record, org_ref = self._enrich(event)
        context: dict[str, Any] = {
            "event": event.model_dump(mode="json"),
            "org": record.data if record else {},
            "record": org_ref.model_dump() if org_ref else {},
            "docs": [],
        }
        retrieved = None
        if self.topology.retrieval is not None:
            progress.stage = "retrieve"
            with tracing.span(self.tracer, "retrieve") as span:
                retrieved, context["docs"] = await self._retrieve(event, tenant, context)
                span.set_attribute("llmflow.retrieval.collection", retrieved.collection)
                span.set_attribute("llmflow.retrieval.passages", len(retrieved.passages))
        progress.stage = "model"
        steps = await self._run_calls(event.id, tenant, context, image_urls)
        results = [step for step in steps if isinstance(step, ModelCallResult)]
        progress.stage = "output"
        answers = {result.name: result.model_dump(mode="json") for result in results}
        routes = self._routes(event.id, {**context, "calls": answers})
        return Output(
            event_id=event.id,
            event_key=event.key,
            tenant=event.tenant,
            source_topic=source.topic,
            source_partition=source.partition,
            source_offset=source.offset,
            topology=self.topology.name,
            topology_version=self.topology.version,
            org_record=org_ref,
            retrieval=retrieved,
            images=[
                ImageInfo(
                    sha256=image.sha256,
                    width=image.width,
                    height=image.height,
                    original_width=image.original_width,
                    original_height=image.original_height,
                )
                for image in images
            ],
            calls=results,
            skipped=[step for step in steps if isinstance(step, SkippedCall)],
            routes=routes,
            totals=Totals.of(
                [*results, *([retrieved.embedding] if retrieved and retrieved.embedding else [])],
                round((time.perf_counter() - started) * 1000, 3),
            ),
            worker=self._worker_id,
            received_at=received,
            produced_at=_now(),
        )

    def _routes(self, event_id: str, context: dict[str, Any]) -> list[str]:
        """The routes whose conditions hold. A condition that fails (`'a' < 1`) sends the
        output nowhere more, with a warning: the output itself is done and paid for."""
        taken = []
        for route in self.topology.routes:
            try:
                if route.when is None or holds(route.when, context, lenient=True):
                    taken.append(route.name)
            except Exception as exc:
                log.warning(
                    "%s: route %s not taken for event %s: its condition failed: %s",
                    self.topology.name,
                    route.name,
                    event_id,
                    _exception_text(exc),
                )
        return taken

    async def _prepare_images(self, refs: list[ImageRef]) -> list[PreparedImage]:
        if not refs:
            return []
        loop = asyncio.get_running_loop()
        with tracing.span(self.tracer, "prepare images") as span:
            span.set_attribute("llmflow.images", len(refs))
            jobs = [loop.run_in_executor(self._executor, self._prepare_one, ref) for ref in refs]
            try:
                return list(await asyncio.gather(*jobs))
            # Anything else (a null byte in a file path, a symlink loop) is unexpected: the
            # error boundary of `handle` makes it an `internal_error` of stage `image`.
            except ImageError as exc:
                raise StageFailure("image", exc.kind, str(exc)) from exc

    def _prepare_one(self, ref: ImageRef) -> PreparedImage:
        """Runs in a worker thread: fetch or decode the bytes, then prepare them."""
        if ref.data_base64 is not None:
            raw = decode_inline(ref.data_base64, self._limits)
        else:
            assert ref.url is not None  # the contract guarantees one of the two
            raw = load_image_bytes(ref.url, self._limits)
        return prepare_image(raw, self._limits)

    def _enrich(self, event: AnyEvent) -> tuple[OrgRecord | None, OrgRecordRef | None]:
        spec = self.topology.enrichment
        if spec is None:
            return None, None
        key = event.key if spec.key_from == "key" else event.source
        with tracing.span(self.tracer, "enrich") as span:
            record = self._orgdata.get(spec.table, key) if self._orgdata else None
            span.set_attribute("llmflow.orgdata.table", spec.table)
            span.set_attribute("llmflow.orgdata.found", record is not None)
            if record is None and spec.required:
                raise StageFailure("enrich", "record_not_found", f"no {spec.table} record {key!r}")
        return record, OrgRecordRef(
            table=spec.table,
            key=key,
            version=record.version if record else None,
            offset=record.offset if record else None,
        )

    async def _retrieve(
        self, event: AnyEvent, tenant: str, context: dict[str, Any]
    ) -> tuple[Retrieved, list[dict[str, Any]]]:
        """The passages of the retrieval step, and the `docs` the prompts see. The event's
        own tenant (not its key) scopes the search: without one, shared documents only."""
        spec = self.topology.retrieval
        assert spec is not None and self._passages is not None
        try:
            query = render(spec.query, context)
            filters = {field: render(value, context) for field, value in spec.filters.items()}
        except TemplateError as exc:
            raise StageFailure(
                "retrieve", type(exc).__name__, f"retrieval query or filter: {exc.message or exc}"
            ) from exc
        embedding = vector = None
        if self._query_call is not None:
            try:
                embedding = await self._call_once(
                    self._query_call,
                    tenant,
                    call_id=call_id(event.id, self.topology, self._query_call),
                    system=None,
                    user=query,
                    image_urls=[],
                )
            except ModelCallError as exc:
                kind = f"{exc.kind}{'_retries_exhausted' if exc.transient else ''}"
                raise StageFailure("model", kind, f"retrieval query: {exc}") from exc
            vector = np.asarray(embedding.answer, dtype=np.float32)
        search = partial(
            self._passages.search,
            spec.collection,
            query,
            vector,
            top_k=spec.top_k,
            mode=spec.mode,
            tenant=event.tenant,
            filters=filters,
        )
        try:
            hits = await asyncio.get_running_loop().run_in_executor(self._executor, search)
        except OrgDataError as exc:
            raise StageFailure("retrieve", "search_failed", str(exc)) from exc
        passages = [
            RetrievedPassage(
                id=hit.name,
                key=hit.key,
                n=hit.n,
                version=hit.version,
                offset=hit.offset,
                score=hit.score,
            )
            for hit in hits
        ]
        docs = [
            {
                "id": hit.name,
                "key": hit.key,
                "text": hit.text,
                "score": hit.score,
                "record": hit.record,
            }
            for hit in hits
        ]
        shown = _clip(query, 2000)
        return Retrieved(
            collection=spec.collection,
            mode=spec.mode,
            query=shown,
            embedding=embedding,
            passages=passages,
        ), docs

    async def _run_calls(
        self,
        event_id: str,
        tenant: str,
        context: dict[str, Any],
        image_urls: list[str],
    ) -> list[ModelCallResult | SkippedCall]:
        """Every call, in the topology's order: each runs once the calls it needs have
        answered, so independent ones run at once (the event's critical path sets its time)."""
        steps: dict[str, asyncio.Task[ModelCallResult | SkippedCall]] = {}
        try:
            async with asyncio.TaskGroup() as group:
                for call in self._order:  # a call's needs have their tasks first
                    needed = [steps[name] for name in call.needs]
                    steps[call.name] = group.create_task(
                        self._step(call, needed, event_id, tenant, context, image_urls, group)
                    )
        except* ModelCallError as group_error:
            errors = [e for e in group_error.exceptions if isinstance(e, ModelCallError)]
            # The event's own fault first: an outage must not hide a request that is bad.
            first = min(errors, key=lambda e: e.endpoint_down)
            kind = f"{first.kind}{'_retries_exhausted' if first.transient else ''}"
            raise StageFailure("model", kind, str(first)) from first
        return [steps[call.name].result() for call in self.topology.calls]

    async def _step(
        self,
        call: ModelCall,
        needed: list[asyncio.Task[ModelCallResult | SkippedCall]],
        event_id: str,
        tenant: str,
        context: dict[str, Any],
        image_urls: list[str],
        storing: asyncio.TaskGroup,
    ) -> ModelCallResult | SkippedCall:
        answers: dict[str, Any] = {}
        for task in needed:
            step = await task
            if isinstance(step, SkippedCall):  # what it needs is missing: skipped too
                return SkippedCall(name=call.name, when=step.when, because=step.name)
            answers[step.name] = step.model_dump(mode="json")
        seen = {**context, "calls": answers}
        try:
            if call.when is not None and not holds(call.when, seen):
                return SkippedCall(name=call.name, when=call.when)
        except Exception as exc:  # a missing field, `'a' < 1`: the event's, not a bug
            raise StageFailure(
                "prompt", type(exc).__name__, f"call {call.name!r}, when: {_exception_text(exc)}"
            ) from exc
        system, user = self._render(call, seen)
        return await self._call_once(
            call,
            tenant,
            call_id=call_id(event_id, self.topology, call),
            system=system,
            user=user,
            image_urls=image_urls if call.kind == "vision" else [],
            storing=storing,
        )

    async def _call_once(
        self,
        call: ModelCall,
        tenant: str,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
        storing: asyncio.TaskGroup | None = None,
    ) -> ModelCallResult:
        """Reuse an answer paid for before; otherwise call, then record it: before moving
        on, or, with `storing`, in a task of that group, so that the calls that need this
        one start at once and the event waits for every record at the group's end. (An
        event's answers share one record, rewritten in order as answers arrive: one that
        is stored has the answers it was made from stored with it or before it.)"""
        with tracing.model_span(self.tracer, call, call_id) as span:
            if self._paid is not None and (paid := self._paid.get(call_id)) is not None:
                result = paid.model_copy(update={"reused": True, "attempts": 0, "latency_ms": 0.0})
            else:
                result = await self._models.run(
                    call, call_id=call_id, system=system, user=user, image_urls=image_urls
                )
                if self._paid is not None:
                    if storing is None:
                        await self._paid.put(result)  # durable before the event can go on
                    else:
                        storing.create_task(self._paid.put(result))
                if self._budgets is not None:
                    self._budgets.charge(tenant, result.cost_usd)
            tracing.end_call(span, result)
        return result

    def _render(self, call: ModelCall, context: dict[str, Any]) -> tuple[str | None, str]:
        try:
            system = render(call.prompt.system, context) if call.prompt.system else None
            return system, render(call.prompt.user, context)
        except TemplateError as exc:
            raise StageFailure(
                "prompt", type(exc).__name__, f"call {call.name!r}: {exc.message or exc}"
            ) from exc
