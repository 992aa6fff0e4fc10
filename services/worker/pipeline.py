"""One event in, one output, one dead letter or one parked event out. Knows nothing of Kafka.

Stages: decode/validate the contract -> route by kind -> check the tenant's budget
-> prepare images (thread pool) -> look up org data -> render prompts -> run every model
call concurrently (answers paid for before are reused) -> merge.
Every failure becomes a dead letter naming its stage; nothing escapes as an exception.
Model calls, org data, paid answers and budgets come in through the protocols of `ports`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import TemplateError
from pydantic import ValidationError

from llmflow.schemas.dead_letter import DeadLetter, Stage
from llmflow.schemas.events import AnyEvent, ImageRef, event_images, parse_event
from llmflow.schemas.outputs import ImageInfo, ModelCallResult, OrgRecordRef, Output, Totals
from llmflow.schemas.parked import Parked
from llmflow.services.images.fetch import decode_inline, load_image_bytes
from llmflow.services.images.prepare import ImageError, ImageLimits, PreparedImage, prepare_image
from llmflow.services.models.client import ModelCallError, call_id
from llmflow.services.orgdata.store import OrgRecord
from llmflow.services.worker.ports import Budgets, ModelRunner, OrgData, OverBudget, PaidCalls
from llmflow.topologies.prompts import render
from llmflow.topologies.spec import ModelCall, Topology


@dataclass(frozen=True, slots=True)
class SourceMeta:
    """Where the raw event came from, for dead letters."""

    topic: str
    partition: int
    offset: int


Result = Output | DeadLetter | Parked


class StageFailure(Exception):
    """Internal: carries a failure to the single place that turns it into a dead letter."""

    def __init__(self, stage: Stage, kind: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.kind = kind
        self.message = message


def _now() -> datetime:
    return datetime.now(UTC)


def _event_id_of(raw: bytes) -> str | None:
    """Best-effort id of an event that failed validation (only on the failure path)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _provenance(raw: bytes, source: SourceMeta) -> dict[str, Any]:
    """Where an unanswered event came from, and its bytes, so it can be replayed."""
    return {
        "source_topic": source.topic,
        "source_partition": source.partition,
        "source_offset": source.offset,
        "original_b64": base64.b64encode(raw).decode("ascii"),
    }


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "(event)"
        parts.append(f"{where}: {error['msg']}")
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
    ) -> None:
        self.topology = topology
        self._paid = paid
        self._budgets = budgets
        self._models = models
        self._orgdata = orgdata
        self._limits = image_limits
        self._executor = executor
        self._worker_id = worker_id

    async def handle(self, raw: bytes, source: SourceMeta) -> Result:
        received = _now()
        started = time.perf_counter()
        event_id: str | None = None
        try:
            event = self._decode(raw)
            event_id = event.id
            tenant = event.tenant or event.key
            verdict = self._budgets.over_budget(tenant) if self._budgets else None
            if verdict is not None:
                return self._park(event, tenant, verdict, raw, source)
            return await self._answer(event, tenant, source, received, started)
        except StageFailure as failure:
            return DeadLetter(
                event_id=event_id or _event_id_of(raw),
                topology=self.topology.name,
                topology_version=self.topology.version,
                stage=failure.stage,
                error_kind=failure.kind,
                message=failure.message,
                failed_at=_now(),
                **_provenance(raw, source),
            )

    def _park(
        self, event: AnyEvent, tenant: str, verdict: OverBudget, raw: bytes, source: SourceMeta
    ) -> Parked:
        return Parked(
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

    def _decode(self, raw: bytes) -> AnyEvent:
        try:
            event = parse_event(raw)
        except ValidationError as exc:
            if any(error["type"] == "json_invalid" for error in exc.errors()):
                raise StageFailure("decode", "not_json", _describe(exc)) from exc
            raise StageFailure("validate", "contract_violation", _describe(exc)) from exc
        if event.kind not in self.topology.accepts:
            raise StageFailure(
                "route",
                "kind_not_accepted",
                f"{self.topology.name} accepts {self.topology.accepts}, got {event.kind!r}",
            )
        return event

    async def _answer(
        self,
        event: AnyEvent,
        tenant: str,
        source: SourceMeta,
        received: datetime,
        started: float,
    ) -> Output:
        images = await self._prepare_images(event_images(event))
        record, org_ref = self._enrich(event)
        context = {
            "event": event.model_dump(mode="json"),
            "org": record.data if record else {},
            "record": org_ref.model_dump() if org_ref else {},
        }
        image_urls = [image.data_url() for image in images]
        results = await self._run_calls(event.id, tenant, context, image_urls)
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
            totals=Totals.of(results, round((time.perf_counter() - started) * 1000, 3)),
            worker=self._worker_id,
            received_at=received,
            produced_at=_now(),
        )

    async def _prepare_images(self, refs: list[ImageRef]) -> list[PreparedImage]:
        if not refs:
            return []
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self._executor, self._prepare_one, ref) for ref in refs]
        try:
            return list(await asyncio.gather(*jobs))
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
        record = self._orgdata.get(spec.table, key) if self._orgdata else None
        if record is None and spec.required:
            raise StageFailure("enrich", "record_not_found", f"no {spec.table} record {key!r}")
        version = record.version if record else None
        return record, OrgRecordRef(table=spec.table, key=key, version=version)

    async def _run_calls(
        self, event_id: str, tenant: str, context: dict[str, Any], image_urls: list[str]
    ) -> list[ModelCallResult]:
        prompts = [self._render(call, context) for call in self.topology.calls]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self._call_once(
                            call,
                            tenant,
                            call_id=call_id(event_id, self.topology, call),
                            system=system,
                            user=user,
                            image_urls=image_urls if call.kind == "vision" else [],
                        )
                    )
                    for call, (system, user) in zip(self.topology.calls, prompts, strict=True)
                ]
        except* ModelCallError as group_error:
            first = group_error.exceptions[0]
            assert isinstance(first, ModelCallError)
            kind = f"{first.kind}{'_retries_exhausted' if first.transient else ''}"
            raise StageFailure("model", kind, str(first)) from first
        return [task.result() for task in tasks]

    async def _call_once(
        self,
        call: ModelCall,
        tenant: str,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
    ) -> ModelCallResult:
        """Reuse an answer paid for before; otherwise call, then record it before moving on."""
        if self._paid is not None and (paid := self._paid.get(call_id)) is not None:
            return paid.model_copy(update={"reused": True, "attempts": 0, "latency_ms": 0.0})
        result = await self._models.run(
            call, call_id=call_id, system=system, user=user, image_urls=image_urls
        )
        if self._paid is not None:
            self._paid.put(result)
        if self._budgets is not None:
            self._budgets.charge(tenant, result.cost_usd)
        return result

    def _render(self, call: ModelCall, context: dict[str, Any]) -> tuple[str | None, str]:
        try:
            system = render(call.prompt.system, context) if call.prompt.system else None
            return system, render(call.prompt.user, context)
        except TemplateError as exc:
            raise StageFailure(
                "prompt", type(exc).__name__, f"call {call.name!r}: {exc.message or exc}"
            ) from exc
