"""ModelClient against in-process simulators: fallbacks, circuit breaking, repair, costs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import httpx2
import openai
import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry

from llmflow.services.models.breaker import CircuitBreaker
from llmflow.services.models.client import ModelCallError, ModelClient
from llmflow.services.models.costs import Price
from llmflow.services.models.hedging import HedgePolicy
from llmflow.services.models.metrics import ModelMetrics
from llmflow.services.models.quotas import ModelQuota, QuotaLimits, QuotaRegistry
from llmflow.services.models.retry import RetryPolicy
from llmflow.services.modelsim.answers import embedding_vector
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


async def test_a_rejected_key_is_the_endpoints_fault_and_falls_back(endpoints: Factory) -> None:
    locked, locked_server = await endpoints(require_api_key="other")
    backup, _ = await endpoints()
    client = ModelClient(
        {"default": locked, "backup": backup}, policy=RetryPolicy(base_delay_s=0.01)
    )
    result = await run(client, _call(fallbacks=[{"model": "m2", "endpoint": "backup"}]))
    assert result.endpoint == "backup" and await _count(locked_server) == 1
    with pytest.raises(ModelCallError) as info:
        await run(client, _call())
    error = info.value
    assert (error.kind, error.transient, error.endpoint_down) == ("http_401", False, True)
    assert error.endpoints == ("default",) and error.attempts == 1


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
    # Calls and attempts are counted apart: 20 calls, one per event, however often retried.
    assert metrics.calls.labels("m1", "default", "ok")._value.get() == 20
    assert metrics.attempts.labels("m1", "default", "ok")._value.get() == 20
    assert metrics.attempts.labels("m1", "default", "http_429")._value.get() == attempts - 20


async def test_a_failed_call_counts_once_with_every_attempt_apart(endpoints: Factory) -> None:
    broken, server = await endpoints(rate_500=1.0)
    metrics = ModelMetrics(CollectorRegistry())
    client = ModelClient(
        {"default": broken},
        policy=RetryPolicy(max_attempts=3, base_delay_s=0.01),
        breaker=CircuitBreaker(failure_threshold=10, cooldown_s=60),
        metrics=metrics,
    )
    with pytest.raises(ModelCallError):
        await run(client, _call())
    assert await _count(server) == 3
    assert metrics.calls.labels("m1", "default", "failed")._value.get() == 1
    assert metrics.calls.labels("m1", "default", "ok")._value.get() == 0
    assert metrics.attempts.labels("m1", "default", "http_500")._value.get() == 3


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


class _StuckEndpoint:
    """An AsyncOpenAI stand-in whose chat request blocks until `go` is set, then does `then`.

    `failures` 503s with Retry-After 30 s come first, answered at once: the retry path.
    """

    def __init__(self, then: BaseException, failures: int = 0) -> None:
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.failed = asyncio.Event()
        self.then = then
        self.failures = failures
        self.requests = 0
        self.client = cast(AsyncOpenAI, SimpleNamespace(post=self.post))

    async def post(self, path: str, **kwargs: Any) -> Any:
        self.requests += 1
        if self.requests <= self.failures:
            self.failed.set()
            request = httpx2.Request("POST", "http://endpoint/v1/chat/completions")
            response = httpx2.Response(503, headers={"retry-after": "30"}, request=request)
            raise openai.InternalServerError("busy", response=response, body=None)
        self.started.set()
        await self.go.wait()
        raise self.then


def _one_slot() -> tuple[QuotaRegistry, ModelQuota]:
    registry = QuotaRegistry({"m1": QuotaLimits(max_concurrent=1)})
    quota = registry.get("m1")
    assert quota is not None and quota.concurrency_limit == 1
    return registry, quota


async def _later_call_gets_the_slot(
    endpoints: Factory, registry: QuotaRegistry, quota: ModelQuota
) -> None:
    sim, _ = await endpoints()
    client = ModelClient({"default": sim}, policy=RetryPolicy(), quotas=registry)
    result = await asyncio.wait_for(run(client, _call()), timeout=10)
    assert result.answer and quota.in_flight == 0


async def test_cancelled_call_releases_its_quota_slot(endpoints: Factory) -> None:
    registry, quota = _one_slot()
    stuck = _StuckEndpoint(then=AssertionError("never let through"))
    client = ModelClient({"default": stuck.client}, policy=RetryPolicy(), quotas=registry)
    task = asyncio.create_task(run(client, _call()))
    await asyncio.wait_for(stuck.started.wait(), timeout=5)
    assert quota.in_flight == 1
    task.cancel()  # what a TaskGroup does to the siblings of a failed call
    with pytest.raises(asyncio.CancelledError):
        await task
    assert quota.in_flight == 0
    await _later_call_gets_the_slot(endpoints, registry, quota)


async def test_sibling_failure_in_a_task_group_releases_the_slot(endpoints: Factory) -> None:
    registry, quota = _one_slot()
    stuck = _StuckEndpoint(then=AssertionError("never let through"))
    client = ModelClient({"default": stuck.client}, policy=RetryPolicy(), quotas=registry)

    async def failing_sibling() -> None:
        await stuck.started.wait()
        raise ValueError("another call of the event failed")

    async def event() -> None:  # how the pipeline runs the calls of one event
        async with asyncio.TaskGroup() as group:
            group.create_task(run(client, _call()))
            group.create_task(failing_sibling())

    with pytest.raises(ExceptionGroup) as info:
        await event()
    assert info.group_contains(ValueError)
    assert quota.in_flight == 0
    await _later_call_gets_the_slot(endpoints, registry, quota)


async def test_unexpected_exception_releases_its_quota_slot(endpoints: Factory) -> None:
    registry, quota = _one_slot()
    stuck = _StuckEndpoint(then=KeyError("a bug, not an API error"))
    client = ModelClient({"default": stuck.client}, policy=RetryPolicy(), quotas=registry)
    task = asyncio.create_task(run(client, _call()))
    await asyncio.wait_for(stuck.started.wait(), timeout=5)
    assert quota.in_flight == 1
    stuck.go.set()
    with pytest.raises(KeyError, match="a bug"):
        await task
    assert quota.in_flight == 0
    await _later_call_gets_the_slot(endpoints, registry, quota)


async def test_retry_backoff_does_not_hold_the_slot(endpoints: Factory) -> None:
    registry, quota = _one_slot()
    stuck = _StuckEndpoint(then=AssertionError("never let through"), failures=1)
    client = ModelClient({"default": stuck.client}, policy=RetryPolicy(), quotas=registry)
    task = asyncio.create_task(run(client, _call()))
    await asyncio.wait_for(stuck.failed.wait(), timeout=5)
    for _ in range(10):  # let it reach the backoff sleep (>= the 30 s Retry-After)
        await asyncio.sleep(0)
    assert not task.done() and stuck.requests == 1
    assert quota.in_flight == 0 and quota.holds_total == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert quota.in_flight == 0


async def test_slow_request_is_hedged_through_the_sdk(endpoints: Factory) -> None:
    # Seed 81 draws: five quick answers, then one slow (the first request of the sixth
    # call), then quick again (its hedge).
    sim, server = await endpoints(rate_slow=0.3, slow_ms=600, seed=81)
    metrics = ModelMetrics(CollectorRegistry())
    hedge = HedgePolicy(enabled=True, min_samples=5, min_delay_s=0.05)
    client = ModelClient({"default": sim}, policy=RetryPolicy(), hedge=hedge, metrics=metrics)
    for _ in range(5):
        assert (await run(client, _call())).attempts == 1
    started = asyncio.get_running_loop().time()
    result = await client.run(_call(), call_id="slow-1", system=None, user="hi", image_urls=[])
    assert asyncio.get_running_loop().time() - started < 0.5
    assert result.attempts == 2 and result.answer
    assert metrics.hedges.labels("m1", "won")._value.get() == 1
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.make_url("/sim/requests"), params={"call_id": "slow-1"}) as response,
    ):
        answered = await response.json()
    assert [e["status"] for e in answered] == [200]  # the hedge; the first one was dropped


# -- the call path over HTTP: a fake endpoint at the transport seam -----------------------


def _scripted(*replies: httpx2.Response) -> tuple[AsyncOpenAI, list[httpx2.Request]]:
    """A client whose endpoint gives `replies` in order, the last one from then on."""
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return replies[min(len(seen), len(replies)) - 1]

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(answer))
    client = AsyncOpenAI(base_url="http://model/v1", api_key="k", max_retries=0, http_client=http)
    return client, seen


def _chat_reply(content: str = '{"mood": "calm"}', **fields: Any) -> httpx2.Response:
    message = {"role": "assistant", "content": content}
    body = {"model": "m1-2026", "choices": [{"message": message}]} | fields
    return httpx2.Response(200, json=body)


async def test_one_request_carries_auth_call_id_and_the_prebuilt_body() -> None:
    sdk, seen = _scripted(_chat_reply(usage={"prompt_tokens": 9, "completion_tokens": 4}))
    client = ModelClient({"default": sdk}, policy=RetryPolicy())
    result = await run(client, _call(output_schema=SCHEMA, max_tokens=20))
    assert result.answer == {"mood": "calm"} and result.model == "m1-2026"
    assert (result.tokens_in, result.tokens_out, result.attempts) == (9, 4, 1)
    (request,) = seen
    assert str(request.url) == "http://model/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer k"
    assert request.headers["x-llmflow-call-id"] == "id-1"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body["model"] == "m1" and body["max_tokens"] == 20
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    await sdk.close()


async def test_an_answer_without_usage_counts_no_tokens_and_still_repairs() -> None:
    sdk, seen = _scripted(_chat_reply('{"mood": "meh"}'), _chat_reply())
    client = ModelClient({"default": sdk}, policy=RetryPolicy())
    result = await run(client, _call(output_schema=SCHEMA))
    assert result.answer == {"mood": "calm"} and result.repaired and len(seen) == 2
    assert (result.tokens_in, result.tokens_out, result.cost_usd) == (0, 0, 0)
    await sdk.close()


@pytest.mark.parametrize(
    "broken",
    [
        httpx2.Response(200, text="<html>gateway</html>"),
        httpx2.Response(200, json={"model": "m1", "choices": []}),
    ],
)
async def test_a_broken_answer_is_retried_then_a_classified_failure(
    broken: httpx2.Response,
) -> None:
    sdk, seen = _scripted(broken)
    metrics = ModelMetrics(CollectorRegistry())
    policy = RetryPolicy(max_attempts=2, base_delay_s=0.01)
    client = ModelClient({"default": sdk}, policy=policy, metrics=metrics)
    with pytest.raises(ModelCallError) as info:
        await run(client, _call())
    error = info.value
    assert (error.kind, error.transient, error.endpoint_down) == ("bad_response", True, True)
    assert error.attempts == len(seen) == 2 and "bad answer from" in str(error)
    assert metrics.attempts.labels("m1", "default", "bad_response")._value.get() == 2
    await sdk.close()


async def test_an_error_answer_fails_the_call_at_once_and_spares_the_endpoint() -> None:
    sdk, seen = _scripted(httpx2.Response(200, json={"error": {"message": "too long"}}))
    client = ModelClient({"default": sdk}, policy=RetryPolicy(max_attempts=5))
    with pytest.raises(ModelCallError) as info:
        await run(client, _call())
    error = info.value
    assert (error.kind, error.transient, error.endpoint_down) == ("error_answer", False, False)
    assert len(seen) == 1 and "too long" in str(error)
    await sdk.close()


async def test_a_broken_answer_falls_back_and_then_recovers() -> None:
    sdk, seen = _scripted(httpx2.Response(200, content=b'{"choices": [{"mess'), _chat_reply("ok"))
    backup, _ = _scripted(_chat_reply("from backup"))
    policy = RetryPolicy(max_attempts=1)
    client = ModelClient({"default": sdk, "backup": backup}, policy=policy)
    call = _call(fallbacks=[{"model": "m2", "endpoint": "backup"}])
    assert (await run(client, call)).answer == "from backup"
    assert (await run(client, call)).answer == "ok" and len(seen) == 2
    await sdk.close()
    await backup.close()


async def test_a_429_with_retry_after_holds_the_quota_then_answers() -> None:
    limited = httpx2.Response(
        429, headers={"retry-after-ms": "20"}, json={"error": {"message": "slow down"}}
    )
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "10ms"}
    answered = _chat_reply("fine", usage={"prompt_tokens": 1, "completion_tokens": 1})
    answered.headers.update(spent)
    sdk, seen = _scripted(limited, answered)
    registry = QuotaRegistry({"m1": QuotaLimits(max_concurrent=4)})
    quota = registry.get("m1")
    assert quota is not None
    metrics = ModelMetrics(CollectorRegistry())
    client = ModelClient({"default": sdk}, policy=RetryPolicy(), quotas=registry, metrics=metrics)
    result = await run(client, _call())
    assert result.answer == "fine" and result.attempts == 2 == len(seen)
    # The Retry-After held every caller, and so did the spent budget of the answer's headers.
    assert quota.holds_total == 2 and quota.in_flight == 0
    assert metrics.retries.labels("m1", "http_429")._value.get() == 1
    await sdk.close()


async def test_status_errors_keep_the_sdk_types() -> None:
    sdk, _ = _scripted(httpx2.Response(400, json={"error": {"message": "bad request"}}))
    client = ModelClient({"default": sdk}, policy=RetryPolicy())
    with pytest.raises(ModelCallError) as info:
        await run(client, _call())
    assert isinstance(info.value.__cause__, openai.BadRequestError)
    assert (info.value.kind, info.value.transient, info.value.endpoint_down) == (
        "http_400",
        False,
        False,
    )
    await sdk.close()


async def test_embeddings_through_the_simulator(endpoints: Factory) -> None:
    sim, _ = await endpoints()
    client = ModelClient({"default": sim}, policy=RetryPolicy())
    call = _call(kind="embedding", model="sim-embed", dimensions=16)
    result = await run(client, call, user="refund my invoice")
    assert len(result.answer) == 16 and result.tokens_in > 0 and result.tokens_out == 0
    expected = embedding_vector("sim-embed", "refund my invoice", 16)
    assert result.answer == pytest.approx(expected, rel=1e-6)  # float32 on the wire
    assert result.model == "sim-embed"
