"""Schema-breaking answers (`rate_invalid`): exact defects, reproducible draws, request log."""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from llmflow.services.models.structured import SchemaViolation, parse_answer
from llmflow.services.models.tokens import count_text_tokens
from llmflow.services.modelsim.answers import chat_completion
from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.faults import Fault, FaultInjector
from llmflow.services.modelsim.schema import (
    BROKEN_JSON,
    NOT_IN_ENUM,
    broken_answer,
    schema_instance,
)
from llmflow.services.modelsim.server import make_app

TICKET: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "priority": {"$ref": "#/$defs/priority"},
        "score": {"type": "integer"},
    },
    "required": ["summary", "priority", "score"],
    "additionalProperties": False,
    "$defs": {"priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]}},
}
REQUIRED_ONLY: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
    "required": ["b", "a"],
}
ENUM_ONLY: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "kind": {"enum": ["x", "y"]}},
}
NEITHER: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "integer"}}}


def _digest(n: int) -> str:
    return f"{n:064x}"


def _chat(text: str, schema: dict[str, Any] | None = TICKET) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "sim-chat", "messages": [{"role": "user", "content": text}]}
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "ticket", "strict": True, "schema": schema},
        }
    return body


def test_required_property_is_dropped() -> None:
    for n in range(5):
        valid = schema_instance(REQUIRED_ONLY, _digest(n))
        broken = json.loads(broken_answer(REQUIRED_ONLY, _digest(n)))
        assert broken == {"a": valid["a"]}


def test_enum_property_leaves_the_enum() -> None:
    valid = schema_instance(ENUM_ONLY, _digest(1))
    assert json.loads(broken_answer(ENUM_ONLY, _digest(1))) == {**valid, "kind": NOT_IN_ENUM}


def test_schema_without_either_gets_invalid_json() -> None:
    assert broken_answer(NEITHER, _digest(1)) == BROKEN_JSON == '{"broken": '
    assert broken_answer({"type": "string", "enum": ["a"]}, _digest(1)) == BROKEN_JSON


def test_digest_picks_the_defect_deterministically() -> None:
    kinds = set()
    for n in range(40):
        text = broken_answer(TICKET, _digest(n))
        assert text == broken_answer(TICKET, _digest(n))
        broken = json.loads(text)
        valid = schema_instance(TICKET, _digest(n))
        if "summary" not in broken:
            kinds.add("dropped")
            assert broken == {key: valid[key] for key in ("priority", "score")}
        else:
            kinds.add("enum")
            assert broken == {**valid, "priority": NOT_IN_ENUM}
    assert kinds == {"dropped", "enum"}


@pytest.mark.parametrize("schema", [TICKET, REQUIRED_ONLY, ENUM_ONLY, NEITHER])
def test_broken_chat_answers_fail_validation(schema: dict[str, Any]) -> None:
    for text in ("triage this", "and this", "one more"):
        body = _chat(text, schema)
        answer = chat_completion(body, break_schema=True)
        content = answer["choices"][0]["message"]["content"]
        with pytest.raises(SchemaViolation):
            parse_answer(content, schema)
        assert answer["usage"]["completion_tokens"] == count_text_tokens(content)
        valid = chat_completion(body)["choices"][0]["message"]["content"]
        assert parse_answer(valid, schema) == json.loads(valid)


def test_answers_without_a_schema_ignore_break_schema() -> None:
    for response_format in (None, {"type": "text"}, {"type": "json_object"}):
        body = _chat("hello", None)
        if response_format is not None:
            body["response_format"] = response_format
        assert chat_completion(body, break_schema=True) == chat_completion(body)


def test_rate_invalid_is_validated_apart_from_the_fault_band() -> None:
    with pytest.raises(ValidationError):
        SimulatorConfig(rate_invalid=1.5)
    with pytest.raises(ValidationError):
        SimulatorConfig(rate_invalid=-0.1)
    assert SimulatorConfig(rate_429=0.5, rate_500=0.5, rate_invalid=1).rate_invalid == 1
    assert SimulatorConfig.model_fields["rate_invalid"].description


def test_invalid_draws_are_reproducible_and_leave_faults_alone() -> None:
    config = SimulatorConfig(rate_invalid=0.3, rate_429=0.3, seed=5)

    def draws(config: SimulatorConfig) -> tuple[list[bool], list[Fault]]:
        injector = FaultInjector(config)
        invalid = [injector.next_invalid() for _ in range(500)]
        return invalid, [injector.next_fault() for _ in range(500)]

    invalid, faults = draws(config)
    assert (invalid, faults) == draws(config)
    assert 0.25 <= sum(invalid) / 500 <= 0.35
    assert faults == draws(config.model_copy(update={"rate_invalid": 0}))[1]
    assert invalid != draws(config.model_copy(update={"seed": 6}))[0]


@asynccontextmanager
async def simulator(**settings: Any) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(SimulatorConfig(**settings)))) as client:
        yield client


async def _contents(client: TestClient[Any, Any], bodies: list[dict[str, Any]]) -> list[str]:
    contents = []
    for body in bodies:
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status == 200
        contents.append((await response.json())["choices"][0]["message"]["content"])
    return contents


async def _log(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await (await client.get("/sim/requests")).json()
    return entries


def _broken(content: str) -> bool:
    try:
        parse_answer(content, TICKET)
    except SchemaViolation:
        return True
    return False


BODIES = [_chat(f"ticket number {n}") for n in range(60)]


async def test_rate_one_always_breaks() -> None:
    async with simulator(rate_invalid=1) as client:
        contents = await _contents(client, BODIES[:10])
        assert all(_broken(content) for content in contents)
        log = await _log(client)
        assert [entry["invalid"] for entry in log] == [True] * 10
        assert all(entry["ok"] for entry in log)


async def test_rate_zero_never_breaks() -> None:
    async with simulator() as client:
        contents = await _contents(client, BODIES[:10])
        assert not any(_broken(content) for content in contents)
        assert not any(entry["invalid"] for entry in await _log(client))


async def test_seeded_rate_is_reproducible_over_http() -> None:
    async def run() -> tuple[list[bool], list[bool]]:
        async with simulator(rate_invalid=0.3, seed=3) as client:
            contents = await _contents(client, BODIES)
            return [_broken(c) for c in contents], [e["invalid"] for e in await _log(client)]

    broken, logged = await run()
    assert broken == logged
    assert (broken, logged) == await run()
    assert 0.15 <= sum(broken) / len(broken) <= 0.45


async def test_requests_without_a_schema_are_never_affected() -> None:
    plain = [_chat(f"hello {n}", None) for n in range(5)]
    async with simulator(rate_invalid=1) as client:
        contents = await _contents(client, plain)
        assert contents == [
            chat_completion(body)["choices"][0]["message"]["content"] for body in plain
        ]
        embedded = await client.post("/v1/embeddings", json={"model": "sim-embed", "input": "x"})
        assert embedded.status == 200
        assert not any(entry["invalid"] for entry in await _log(client))


async def test_faulted_requests_are_not_marked_invalid() -> None:
    async with simulator(rate_invalid=1, rate_500=1) as client:
        response = await client.post("/v1/chat/completions", json=BODIES[0])
        assert response.status == 500
        [entry] = await _log(client)
        assert (entry["status"], entry["ok"], entry["invalid"]) == (500, False, False)


async def test_fault_sequence_is_unchanged_by_rate_invalid() -> None:
    async def statuses(rate_invalid: float) -> list[int]:
        async with simulator(rate_429=0.3, seed=11, rate_invalid=rate_invalid) as client:
            return [
                (await client.post("/v1/chat/completions", json=body)).status
                for body in BODIES[:40]
            ]

    assert await statuses(0) == await statuses(0.5)
