"""An optional judge: a model call that scores pairs of answers (live, shadow) against a
rubric. It goes through the same model client as every call, so it is priced, retried and
held to the quotas; its cost is reported apart from both sides'."""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from llmflow.schemas.outputs import Output
from llmflow.services.models.client import ModelCallError
from llmflow.services.worker.ports import ModelRunner
from llmflow.topologies.spec import ModelCall, Prompt

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["live_score", "shadow_score", "preferred", "reason"],
    "properties": {
        "live_score": {"type": "integer", "minimum": 1, "maximum": 5},
        "shadow_score": {"type": "integer", "minimum": 1, "maximum": 5},
        "preferred": {"type": "string", "enum": ["live", "shadow", "tie"]},
        "reason": {"type": "string"},
    },
}
ANSWER_MAX_CHARS = 4000


@dataclass(frozen=True, slots=True)
class Pair:
    event: str
    call: str
    live: Any
    shadow: Any


def pairs(live: dict[str, Output], shadow: dict[str, Output], calls: set[str]) -> list[Pair]:
    """The pairs of differing answers of `calls` (events in both), in event order."""
    found = []
    for event in sorted(set(live) & set(shadow)):
        ours = {c.name: c.answer for c in live[event].calls}
        for call in shadow[event].calls:
            if call.name in calls and call.name in ours and ours[call.name] != call.answer:
                found.append(Pair(event, call.name, ours[call.name], call.answer))
    return found


def judge_call(model: str, endpoint: str, rubric: str) -> ModelCall:
    version = "judge-" + hashlib.sha256(rubric.encode()).hexdigest()[:8]
    return ModelCall(
        name="judge",
        model=model,
        endpoint=endpoint,
        temperature=0,
        output_schema=VERDICT_SCHEMA,
        # The rubric is sent as it is written (`judge` passes it), never rendered: it may
        # well hold braces of its own, e.g. an example answer in JSON.
        prompt=Prompt(version=version, user="(per pair)"),
    )


async def judge(
    models: ModelRunner, call: ModelCall, rubric: str, found: list[Pair], concurrency: int = 8
) -> dict[str, Any]:
    """Score every pair; a pair whose judge call fails is counted, not scored."""
    slots = asyncio.Semaphore(concurrency)

    async def one(pair: Pair) -> dict[str, Any] | None:
        user = (
            f"Call: {pair.call}\n\nAnswer of the live version:\n{_shown(pair.live)}\n\n"
            f"Answer of the candidate (shadow):\n{_shown(pair.shadow)}\n\n"
            "Score each answer from 1 to 5 against the rubric and say which is better."
        )
        key = hashlib.sha256(f"{call.prompt.version}\x1f{pair.event}\x1f{pair.call}".encode())
        async with slots:
            try:
                result = await models.run(
                    call, call_id=key.hexdigest()[:32], system=rubric, user=user, image_urls=[]
                )
            except ModelCallError:
                return None
        verdict = result.answer
        if not isinstance(verdict, dict) or not {"live_score", "shadow_score"} <= set(verdict):
            return None  # not the verdict its schema asks for: not scored
        return {**verdict, "cost_usd": result.cost_usd, "event": pair.event, "call": pair.call}

    verdicts = await asyncio.gather(*(one(pair) for pair in found))
    scored = [v for v in verdicts if v is not None]
    per_call: dict[str, Any] = {}
    for name in sorted({v["call"] for v in scored}):
        mine = [v for v in scored if v["call"] == name]
        per_call[name] = {
            "pairs": len(mine),
            "live_score_mean": round(statistics.fmean(v["live_score"] for v in mine), 3),
            "shadow_score_mean": round(statistics.fmean(v["shadow_score"] for v in mine), 3),
            "preferred": dict(Counter(v["preferred"] for v in mine)),
        }
    return {
        "model": call.model,
        "rubric_version": call.prompt.version,
        "pairs": len(found),
        "failed": len(verdicts) - len(scored),
        "cost_usd": round(sum(v["cost_usd"] for v in scored), 9),
        "calls": per_call,
    }


def _shown(answer: Any) -> str:
    text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
    return text[:ANSWER_MAX_CHARS]
