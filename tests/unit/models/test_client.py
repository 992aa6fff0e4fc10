"""ModelClient against in-process simulators: fallbacks, circuit breaking, repair, costs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry

from llmflow.services.models.breaker import CircuitBreaker
from llmflow.services.models.client import ModelCallError, ModelClient
from llmflow.services.models.costs import Price
from llmflow.services.models.metrics import ModelMetrics
from llmflow.services.models.retry import RetryPolicy
from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app
from llmflow.topologies.spec import ModelCall

Factory = Callable[..., Any]
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mood"],
    "properties": {"mood": {"type": "string", "enum": ["calm", "angry"]}},
}


def _call(**fields: Any) -> ModelCall:
    spec = {"name": "c", "model": "m1", "prompt": {"version": "p1", "user": "u"}} | fields
    return ModelCall.model_validate(spec)


@pytest.fixture
async def endpoints() -> AsyncIterator[Factory]:
    servers: list[TestServer] = []
    clients: list[AsyncOpenAI] = []

    async def start(**sim: Any) -> tuple[AsyncOpenAI, TestServer]:
        server = TestServer(make_app(SimulatorConfig(**sim)))
        await server.start_server()
        servers.append(server)
        client = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k", max_retries=0)
        clients.append(client)
        return client, server

    yield start
    for client in clients:
        await client.close()
    for server in servers:
        await server.close()


async def _count(server: TestServer) -> int:
    """Requests the simulator received."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/sim/stats")) as response,
    ):
        stats: dict[str, Any] = await response.json()
        return int(stats["total"])


async def run(client: ModelClient, call: ModelCall, user: str = "hello there") -> Any:
    return await client.run(call, call_id="id-1", system=None, user=user, image_urls=[])


async def test_fallback_answers_when_primary_fails(endpoints: Factory) -> None:
    broken, broken_server = await endpoints(rate_500=1.0)
    backup, _ = await endpoints()
    metrics = ModelMetrics(CollectorRegistry())
    client = ModelClient(
        {"default": broken, "backup": backup},
        policy=RetryPolicy(max_attempts=2, base_delay_s=0.01),
        breaker=CircuitBreaker(failure_threshold=2, cooldown_s=60),
        metrics=metrics,
    )
    call = _call(fallbacks=[{"model": "m2", "endpoint": "backup"}])
    result = await run(client, call)
    assert (result.model, result.endpoint) == ("m2", "backup")
    assert result.attempts == 3  # two failed attempts at the primary, one at the backup
    assert await _count(broken_server) == 2
    # A second failure opens the primary's circuit: the third call skips it entirely.
    await run(client, call)
    assert await _count(broken_server) == 4
    third = await run(client, call)
    assert third.endpoint == "backup" and third.attempts == 1
    assert await _count(broken_server) == 4
    assert metrics.fallbacks.labels("c")._value.get() == 3


async def test_permanent_error_does_not_fall_back(endpoints: Factory) -> None:
    locked, _ = await endpoints(require_api_key="other")
    backup, backup_server = await endpoints()
    client = ModelClient(
        {"default": locked, "backup": backup}, policy=RetryPolicy(base_delay_s=0.01)
    )
    with pytest.raises(ModelCallError) as info:
        await run(client, _call(fallbacks=[{"model": "m2", "endpoint": "backup"}]))
    assert (info.value.kind, info.value.transient, info.value.attempts) == ("http_401", False, 1)
    assert await _count(backup_server) == 0


async def test_retries_429_until_answered(endpoints: Factory) -> None:
    flaky, server = await endpoints(rate_429=0.5, retry_after_s=0.01, seed=1)
    metrics = ModelMetrics(CollectorRegistry())
    client = ModelClient(
        {"default": flaky}, policy=RetryPolicy(base_delay_s=0.01, max_delay_s=0.05), metrics=metrics
    )
    results = [await run(client, _call(), user=f"text {n}") for n in range(20)]
    attempts = sum(r.attempts for r in results)
    assert attempts == await _count(server) > 20
    assert metrics.retries.labels("m1", "http_429")._value.get() == attempts - 20


async def test_structured_answer_repaired_or_refused(endpoints: Factory) -> None:
    always_broken, _ = await endpoints(rate_invalid=1.0)
    client = ModelClient({"default": always_broken}, policy=RetryPolicy())
    with pytest.raises(ModelCallError) as info:
        await run(client, _call(output_schema=SCHEMA))
    assert info.value.kind == "schema_violation" and not info.value.transient
    assert "$" in str(info.value)

    sometimes, _ = await endpoints(rate_invalid=0.5, seed=2)
    client = ModelClient({"default": sometimes}, policy=RetryPolicy())
    outcomes = []
    for n in range(30):
        try:
            result = await run(client, _call(output_schema=SCHEMA), user=f"mood {n}")
        except ModelCallError:
            outcomes.append("refused")
        else:
            assert result.answer["mood"] in {"calm", "angry"}
            outcomes.append("repaired" if result.repaired else "valid")
    assert {"valid", "repaired", "refused"} <= set(outcomes)


async def test_cost_comes_from_the_price_table(endpoints: Factory) -> None:
    sim, _ = await endpoints()
    prices = {"m1": Price(input_per_mtok=1.0, output_per_mtok=2.0)}
    client = ModelClient({"default": sim}, policy=RetryPolicy(), prices=prices)
    result = await run(client, _call())
    expected = (result.tokens_in * 1.0 + result.tokens_out * 2.0) / 1_000_000
    assert result.cost_usd == pytest.approx(expected) and result.cost_usd > 0
