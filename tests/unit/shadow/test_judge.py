"""The judge: which pairs it scores, what it asks the model, and how it sums the verdicts."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from llmflow.schemas.outputs import ModelCallResult, Output
from llmflow.services.models.client import ModelCallError
from llmflow.services.shadow.judge import (
    ANSWER_MAX_CHARS,
    VERDICT_SCHEMA,
    Pair,
    judge,
    judge_call,
    pairs,
)
from llmflow.topologies import ModelCall
from tests.unit.shadow.helpers import call, output

RUBRIC = "Score helpfulness and accuracy from 1 to 5."


@dataclass(frozen=True, slots=True)
class Asked:
    call: ModelCall
    call_id: str
    system: str | None
    user: str
    image_urls: list[str]


class FakeJudge:
    """A ModelRunner whose verdict (or failure) is picked by a marker in the user message:
    the first key of `verdicts` found in it."""

    def __init__(self, verdicts: dict[str, dict[str, Any] | ModelCallError], cost: float) -> None:
        self.verdicts = verdicts
        self.cost = cost
        self.asked: list[Asked] = []
        self.running = self.peak = 0

    async def run(
        self,
        call: ModelCall,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
    ) -> ModelCallResult:
        self.asked.append(Asked(call, call_id, system, user, image_urls))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(0.001)
        finally:
            self.running -= 1
        verdict = next(v for marker, v in self.verdicts.items() if marker in user)
        if isinstance(verdict, ModelCallError):
            raise verdict
        return ModelCallResult(
            name=call.name,
            kind="chat",
            call_id=call_id,
            model=call.model,
            prompt_version=call.prompt.version,
            answer=verdict,
            tokens_in=100,
            tokens_out=20,
            latency_ms=5.0,
            cost_usd=self.cost,
        )


def _verdict(live: int, shadow: int, preferred: str) -> dict[str, Any]:
    return {"live_score": live, "shadow_score": shadow, "preferred": preferred, "reason": "x"}


def _sides() -> tuple[dict[str, Output], dict[str, Output]]:
    live = {
        "id:e1": output("e1", [call("classify", {"p": "low"}), call("summarize", "live one")]),
        "id:e2": output("e2", [call("classify", {"p": "low"}), call("summarize", "same")]),
        "id:e10": output("e10", [call("summarize", "live ten")]),
        "id:e3": output("e3", [call("summarize", "only live")]),
    }
    shadow = {
        "id:e1": output(
            "e1",
            [
                call("classify", {"p": "high"}),
                call("summarize", "shadow one"),
                call("draft", "new call"),
            ],
        ),
        "id:e2": output("e2", [call("classify", {"p": "low"}), call("summarize", "same")]),
        "id:e10": output("e10", [call("summarize", "shadow ten")]),
        "id:e4": output("e4", [call("summarize", "only shadow")]),
    }
    return live, shadow


# --- pairs --------------------------------------------------------------------------------


def test_pairs_are_the_differing_answers_of_the_named_calls() -> None:
    live, shadow = _sides()
    assert pairs(live, shadow, {"summarize"}) == [
        Pair("id:e1", "summarize", "live one", "shadow one"),
        Pair("id:e10", "summarize", "live ten", "shadow ten"),
    ]
    assert pairs(live, shadow, {"classify", "summarize", "draft"}) == [
        Pair("id:e1", "classify", {"p": "low"}, {"p": "high"}),
        Pair("id:e1", "summarize", "live one", "shadow one"),
        Pair("id:e10", "summarize", "live ten", "shadow ten"),
    ]
    assert pairs(live, shadow, set()) == []
    assert pairs(live, {}, {"summarize"}) == []


# --- judge_call ---------------------------------------------------------------------------


def test_judge_call() -> None:
    judging = judge_call("gpt-4o", "eval", RUBRIC)
    assert judging.name == "judge"
    assert (judging.model, judging.endpoint, judging.temperature) == ("gpt-4o", "eval", 0)
    assert judging.output_schema == VERDICT_SCHEMA
    assert judging.prompt.system is None  # the rubric goes as it is, never rendered
    assert re.fullmatch(r"judge-[0-9a-f]{8}", judging.prompt.version)


def test_judge_version_follows_the_rubric() -> None:
    first = judge_call("m", "default", RUBRIC).prompt.version
    assert judge_call("other", "elsewhere", RUBRIC).prompt.version == first
    assert judge_call("m", "default", RUBRIC + " Be strict.").prompt.version != first


def test_a_rubric_may_contain_template_braces() -> None:
    rubric = 'Answer as {{"live_score": 1, ...}} and never use {# comments.'
    assert (
        judge_call("m", "default", rubric).prompt.version
        != judge_call("m", "default", RUBRIC).prompt.version
    )


# --- judge --------------------------------------------------------------------------------


async def test_judge_sums_the_verdicts_per_call() -> None:
    found = [
        Pair("id:e1", "summarize", "live a", "shadow a"),
        Pair("id:e2", "summarize", "live b", "shadow b"),
        Pair("id:e3", "summarize", "live c", "shadow c"),
        Pair("id:e1", "classify", {"p": "low"}, {"p": "high"}),
        Pair("id:e4", "classify", {"p": "x"}, {"p": "fails"}),
    ]
    models = FakeJudge(
        {
            "shadow a": _verdict(2, 4, "shadow"),
            "shadow b": _verdict(3, 5, "shadow"),
            "shadow c": _verdict(4, 4, "tie"),
            '"high"': _verdict(5, 1, "live"),
            "fails": ModelCallError("judge", "timeout", "no answer", transient=True),
        },
        cost=0.0025,
    )
    judging = judge_call("gpt-4o", "default", RUBRIC)
    verdict = await judge(models, judging, RUBRIC, found)
    assert verdict == {
        "model": "gpt-4o",
        "rubric_version": judging.prompt.version,
        "pairs": 5,
        "failed": 1,
        "cost_usd": 0.01,
        "calls": {
            "classify": {
                "pairs": 1,
                "live_score_mean": 5.0,
                "shadow_score_mean": 1.0,
                "preferred": {"live": 1},
            },
            "summarize": {
                "pairs": 3,
                "live_score_mean": 3.0,
                "shadow_score_mean": 4.333,
                "preferred": {"shadow": 2, "tie": 1},
            },
        },
    }


async def test_judge_asks_with_the_rubric_as_system_prompt() -> None:
    found = [
        Pair("id:e1", "summarize", "live words", "shadow words"),
        Pair("id:e1", "classify", {"p": "low"}, {"p": "héhé"}),
        Pair("id:e2", "summarize", "x" * (ANSWER_MAX_CHARS + 500), "shadow long"),
    ]
    models = FakeJudge({"": _verdict(3, 3, "tie")}, cost=0.0)
    judging = judge_call("m", "default", RUBRIC)
    await judge(models, judging, RUBRIC, found)
    assert len(models.asked) == 3
    assert all(a.system == RUBRIC and a.call is judging for a in models.asked)
    assert all(a.image_urls == [] for a in models.asked)
    by_user = {a.user.split("\n")[0]: a for a in models.asked}
    assert set(by_user) == {"Call: summarize", "Call: classify"}
    first = next(a for a in models.asked if "shadow words" in a.user)
    assert "Answer of the live version:\nlive words" in first.user
    assert "Answer of the candidate (shadow):\nshadow words" in first.user
    structured = next(a for a in models.asked if "Call: classify" in a.user)
    assert json.dumps({"p": "héhé"}, ensure_ascii=False) in structured.user
    long = next(a for a in models.asked if "shadow long" in a.user)
    assert "x" * ANSWER_MAX_CHARS + "\n" in long.user
    assert "x" * (ANSWER_MAX_CHARS + 1) not in long.user
    # One call id per pair, 32 hex digits, the same when asked again.
    ids = [a.call_id for a in models.asked]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    again = FakeJudge({"": _verdict(3, 3, "tie")}, cost=0.0)
    await judge(again, judging, RUBRIC, found)
    assert sorted(a.call_id for a in again.asked) == sorted(ids)


async def test_another_rubric_is_not_the_same_judge_call() -> None:
    found = [Pair("id:e1", "summarize", "a", "b")]
    ids = []
    for rubric in (RUBRIC, RUBRIC + " Be strict."):
        models = FakeJudge({"": _verdict(3, 3, "tie")}, cost=0.0)
        await judge(models, judge_call("m", "default", rubric), rubric, found)
        assert models.asked[0].system == rubric
        ids.append(models.asked[0].call_id)
    assert ids[0] != ids[1]


async def test_judge_runs_at_most_concurrency_calls_at_once() -> None:
    found = [Pair(f"id:e{i}", "summarize", "a", f"b{i}") for i in range(12)]
    models = FakeJudge({"": _verdict(3, 3, "tie")}, cost=0.001)
    verdict = await judge(models, judge_call("m", "default", RUBRIC), RUBRIC, found, 3)
    assert models.peak == 3
    assert verdict["calls"]["summarize"]["pairs"] == 12
    assert verdict["cost_usd"] == 0.012


async def test_judge_of_no_pairs() -> None:
    models = FakeJudge({}, cost=1.0)
    verdict = await judge(models, judge_call("m", "default", RUBRIC), RUBRIC, [])
    assert verdict["pairs"] == verdict["failed"] == 0
    assert verdict["cost_usd"] == 0 and verdict["calls"] == {}
    assert models.asked == []


async def test_judge_when_every_call_fails() -> None:
    found = [Pair("id:e1", "summarize", "a", "b"), Pair("id:e2", "summarize", "c", "d")]
    error = ModelCallError("judge", "bad_request", "refused", transient=False)
    models = FakeJudge({"": error}, cost=1.0)
    verdict = await judge(models, judge_call("m", "default", RUBRIC), RUBRIC, found)
    assert (verdict["pairs"], verdict["failed"], verdict["cost_usd"]) == (2, 2, 0)
    assert verdict["calls"] == {}
