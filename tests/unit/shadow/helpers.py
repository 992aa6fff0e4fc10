"""Results built from the contracts, small enough to write a comparison's events by hand."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.outputs import ModelCallResult, Output, SkippedCall, Totals
from llmflow.schemas.parked import Parked

WHEN = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
SHA = "0" * 64
TOPOLOGY = Path(__file__).resolve().parents[3] / "topologies" / "support_triage.yaml"


def call(
    name: str,
    answer: Any,
    *,
    kind: Literal["chat", "vision", "embedding"] = "chat",
    tokens_in: int = 10,
    tokens_out: int = 5,
    latency_ms: float = 100.0,
    cost_usd: float = 0.001,
    reused: bool = False,
    call_id: str | None = None,
) -> ModelCallResult:
    return ModelCallResult(
        name=name,
        kind=kind,
        call_id=call_id or f"id-{name}",
        model="m",
        prompt_version="1",
        answer=answer,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        latency_ms=latency_ms,
        attempts=0 if reused else 1,
        reused=reused,
        cost_usd=cost_usd,
    )


def output(
    event_id: str,
    calls: list[ModelCallResult],
    *,
    skipped: Sequence[str] = (),
    routes: Sequence[str] = (),
    latency_ms: float = 500.0,
    totals: Totals | None = None,
    version: str = "1",
    offset: int = 0,
) -> Output:
    """An output answering `event_id` with `calls`; totals are their sums unless given."""
    return Output(
        event_id=event_id,
        event_key=f"key-{event_id}",
        tenant="acme",
        source_topic="in",
        source_partition=0,
        source_offset=offset,
        topology="t",
        topology_version=version,
        org_record=None,
        images=[],
        calls=calls,
        skipped=[SkippedCall(name=name, when="false") for name in skipped],
        routes=list(routes),
        totals=totals or Totals.of(calls, latency_ms),
        worker="w:1",
        received_at=WHEN,
        produced_at=WHEN,
    )


def dead_letter(event_id: str | None, *, partition: int = 0, offset: int = 0) -> DeadLetter:
    return DeadLetter(
        event_id=event_id,
        topology="t",
        topology_version="1",
        stage="model" if event_id else "decode",
        error_kind="x",
        message="failed",
        source_topic="in",
        source_partition=partition,
        source_offset=offset,
        original_b64=None,
        original_sha256=SHA,
        original_size=0,
        failed_at=WHEN,
    )


def parked(event_id: str, *, offset: int = 0) -> Parked:
    return Parked(
        event_id=event_id,
        tenant="acme",
        topology="t",
        topology_version="1",
        reason="budget",
        message="over budget",
        period="2026-11-20",
        spent_usd=1.0,
        budget_usd=1.0,
        source_topic="in",
        source_partition=0,
        source_offset=offset,
        original_b64=None,
        original_sha256=SHA,
        original_size=0,
        parked_at=WHEN,
    )
