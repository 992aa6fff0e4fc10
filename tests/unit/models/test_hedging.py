"""Hedged requests: a slow attempt gets a second request with the same call id; first wins."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import httpx2
import openai
import pytest
from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry

from llmflow.services.models.client import ModelCallError, ModelClient
from llmflow.services.models.hedging import HedgeDelays, HedgePolicy, percentile
from llmflow.services.models.metrics import ModelMetrics
from llmflow.services.models.quotas import QuotaLimits, QuotaRegistry
from llmflow.services.models.retry import RetryPolicy
from llmflow.services.worker.settings import Settings
from llmflow.topologies.spec import ModelCall

DELAY = 0.05  # the hedge delay in these tests: the floor, since warm-up answers are instant
WARM_UP = 5
POLICY = HedgePolicy(enabled=True, min_delay_s=DELAY, min_samples=WARM_UP)

# -- the delay --------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 95) == 95.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 95)


def test_delay_needs_samples_and_has_a_floor() -> None:
    delays = HedgeDelays(
        HedgePolicy(enabled=True, min_samples=20, min_delay_s=1.0, cold_delay_s=None)
    )
    for _ in range(19):
        delays.observe("default/m1", 0.2)
    assert delays.delay("default/m1") is None  # too few samples to know what is slow
    delays.observe("default/m1", 0.2)
    assert delays.delay("default/m1") == 1.0  # p95 is 0.2 s, the floor is 1 s
    assert delays.delay("backup/m1") is None  # per endpoint/model
    for _ in range(19):
        delays.observe("default/m1", 3.0)
    assert delays.delay("default/m1") == 3.0  # 19 of 39 samples are slow: p95 is 3 s


def test_before_the_percentile_is_known_a_long_attempt_is_hedged() -> None:
    delays = HedgeDelays(HedgePolicy(enabled=True, min_samples=20))
    assert delays.delay("default/m1") == 10.0  # cold_delay_s: calls of a fresh worker too
    delays.observe("default/m1", 0.2)
    assert delays.delay("default/m1") == 10.0
    assert HedgeDelays(HedgePolicy()).delay("default/m1") is None  # hedging is off


def test_delay_follows_the_recent_window() -> None:
    delays = HedgeDelays(
        HedgePolicy(enabled=True, window=10, min_samples=10, min_delay_s=0, percentile=90)
    )
    for _ in range(10):
        delays.observe("k", 5.0)
    assert delays.delay("k") == 5.0
    for _ in range(10):
        delays.observe("k", 0.5)
    assert delays.samples("k") == 10 and delays.delay("k") == 0.5


def test_disabled_policy_never_hedges() -> None:
    for policy in (HedgePolicy(), HedgePolicy(enabled=True, max_hedges=0)):
        delays = HedgeDelays(policy.model_copy(update={"min_samples": 1}))
        delays.observe("k", 0.1)
        assert delays.delay("k") is None and delays.samples("k") == 0


def test_settings_pass_the_hedge_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LLMFLOW_HEDGE", '{"enabled": true, "percentile": 99, "min_delay_s": 2, "max_hedges": 2}'
    )
    hedge = Settings().models_config().hedge
    assert (hedge.enabled, hedge.percentile, hedge.min_delay_s, hedge.max_hedges) == (
        True,
        99,
        2,
        2,
    )
    monkeypatch.setenv("LLMFLOW_HEDGE", '{"enabled": false}')
    assert not Settings().models_config().hedge.enabled
    monkeypatch.delenv("LLMFLOW_HEDGE")
    default = Settings().models_config().hedge
    assert default == HedgePolicy()
    assert (default.enabled, default.percentile, default.min_delay_s) == (False, 95, 1)
    assert (default.max_hedges, default.window, default.min_samples) == (1, 200, 20)


# -- the client -------------------------------------------------------------------------


@dataclass
class _Step:
    """What one request does: wait `after` s (forever if None), then answer or raise."""

    after: float | None = 0.0
    error: int | None = None  # an HTTP status to fail with


REQUEST = httpx2.Request("POST", "http://endpoint/v1/chat/completions")


def _status_error(status: int) -> openai.APIStatusError:
    response = httpx2.Response(status, request=REQUEST)
    if status >= 500:
        return openai.InternalServerError("busy", response=response, body=None)
    return openai.APIStatusError("refused", response=response, body=None)


@dataclass
class _Endpoint:
    """An AsyncOpenAI stand-in that plays `_Step`s in order (instant answers when none are
    left) and records every request (its request options and JSON body under "body") and
    whether it was cancelled."""

    steps: deque[_Step] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    two_running: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def client(self) -> AsyncOpenAI:
        return cast(AsyncOpenAI, SimpleNamespace(post=self.post))

    async def post(self, path: str, *, cast_to: type, content: bytes, options: Any) -> Any:
        assert (path, cast_to) == ("/chat/completions", httpx2.Response)
        n = len(self.requests)
        self.requests.append({**options, "body": json.loads(content)})
        if len(self.requests) == 2:
            self.two_running.set()
        step = self.steps.popleft() if self.steps else _Step()
        try:
            if step.after is None:
                await asyncio.Event().wait()
            await asyncio.sleep(step.after or 0)
        except asyncio.CancelledError:
            self.cancelled.append(n)
            raise
        if step.error is not None:
            raise _status_error(step.error)
        usage = {"prompt_tokens": 10 + n, "completion_tokens": 100 + n}
        message = {"role": "assistant", "content": f"answer {n}"}
        answer = {"model": "m1", "usage": usage, "choices": [{"message": message}]}
        return httpx2.Response(200, json=answer, request=REQUEST)


def _call() -> ModelCall:
    return ModelCall.model_validate(
        {"name": "c", "model": "m1", "prompt": {"version": "p1", "user": "u"}}
    )


async def run(client: ModelClient) -> Any:
    return await client.run(_call(), call_id="id-1", system=None, user="hi", image_urls=[])


async def _warm(client: ModelClient, endpoint: _Endpoint, calls: int = WARM_UP) -> None:
    """Instant answers: the hedge delay becomes its floor, DELAY."""
    for _ in range(calls):
        await run(client)
    endpoint.requests.clear()
    endpoint.two_running.clear()


def _client(
    endpoint: _Endpoint,
    *,
    hedge: HedgePolicy = POLICY,
    quotas: QuotaRegistry | None = None,
    policy: RetryPolicy | None = None,
) -> tuple[ModelClient, ModelMetrics]:
    metrics = ModelMetrics(CollectorRegistry())
    client = ModelClient(
        {"default": endpoint.client},
        policy=policy or RetryPolicy(base_delay_s=0.01),
        quotas=quotas,
        hedge=hedge,
        metrics=metrics,
    )
    return client, metrics


def _hedges(metrics: ModelMetrics, outcome: str) -> float:
    return float(metrics.hedges.labels("m1", outcome)._value.get())


def _no_tasks_left() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


async def test_hedge_wins_when_the_first_request_hangs() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint)
    await _warm(client, endpoint)
    tokens_before = metrics.tokens.labels("m1", "out")._value.get()
    endpoint.steps.extend([_Step(after=None), _Step()])  # the first hangs for good
    started = time.monotonic()
    result = await asyncio.wait_for(run(client), timeout=2)
    elapsed = time.monotonic() - started
    assert result.answer == "answer 1" and result.attempts == 2
    assert DELAY <= elapsed < 0.5
    # The same request with the same call id; the hedge has the attempt's timeout left.
    first, second = endpoint.requests
    assert first["headers"] == second["headers"] == {"x-llmflow-call-id": "id-1"}
    assert first["body"] == second["body"] and "timeout" not in first
    assert 60 - 0.5 < second["timeout"] < 60 - DELAY
    assert endpoint.cancelled == [0] and _no_tasks_left()
    # Tokens and cost of the kept answer only.
    assert (result.tokens_in, result.tokens_out) == (11, 101)
    assert (_hedges(metrics, "won"), _hedges(metrics, "lost")) == (1, 0)
    assert metrics.tokens.labels("m1", "out")._value.get() == tokens_before + 101


async def test_no_hedge_when_the_first_answers_in_time() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint)
    await _warm(client, endpoint)
    endpoint.steps.append(_Step(after=DELAY / 5))
    result = await run(client)
    assert result.answer == "answer 0" and result.attempts == 1
    assert len(endpoint.requests) == 1
    assert (_hedges(metrics, "won"), _hedges(metrics, "lost")) == (0, 0)


async def test_no_hedge_before_enough_samples() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint)
    await _warm(client, endpoint, calls=WARM_UP - 1)
    endpoint.steps.append(_Step(after=DELAY * 3))
    result = await run(client)
    assert result.attempts == 1 and len(endpoint.requests) == 1
    assert _hedges(metrics, "won") == 0
    # That answer was the missing sample: the next slow attempt is hedged.
    endpoint.steps.extend([_Step(after=None), _Step()])
    assert (await asyncio.wait_for(run(client), timeout=2)).attempts == 2


async def test_disabled_hedging_sends_one_request() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint, hedge=POLICY.model_copy(update={"enabled": False}))
    await _warm(client, endpoint)
    endpoint.steps.append(_Step(after=DELAY * 3))
    result = await run(client)
    assert result.attempts == 1 and len(endpoint.requests) == 1
    assert _hedges(metrics, "won") == _hedges(metrics, "lost") == 0


async def test_first_error_waits_for_the_running_hedge() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint)
    await _warm(client, endpoint)
    # The first fails after the hedge went out; the hedge answers a little later.
    endpoint.steps.extend([_Step(after=DELAY * 2, error=503), _Step(after=DELAY * 2)])
    result = await asyncio.wait_for(run(client), timeout=2)
    assert result.answer == "answer 1" and result.attempts == 2
    assert len(endpoint.requests) == 2 and endpoint.cancelled == []
    assert _hedges(metrics, "won") == 1
    assert metrics.retries.labels("m1", "http_503")._value.get() == 0  # no retry needed


async def test_both_failing_raise_the_first_error_to_the_retry_policy() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint, policy=RetryPolicy(max_attempts=1))
    await _warm(client, endpoint)
    endpoint.steps.extend([_Step(after=DELAY * 2, error=503), _Step(after=DELAY * 2, error=502)])
    with pytest.raises(ModelCallError) as info:
        await asyncio.wait_for(run(client), timeout=2)
    assert (info.value.kind, info.value.transient, info.value.attempts) == ("http_503", True, 2)
    assert (_hedges(metrics, "won"), _hedges(metrics, "lost")) == (0, 1)
    assert _no_tasks_left()


async def test_both_failing_are_retried_as_one_attempt() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint)
    await _warm(client, endpoint)
    endpoint.steps.extend([_Step(after=DELAY * 2, error=503), _Step(after=DELAY * 2, error=500)])
    result = await asyncio.wait_for(run(client), timeout=2)
    assert result.attempts == 3  # two requests of the failed attempt, one of the retry
    assert metrics.retries.labels("m1", "http_503")._value.get() == 1


async def test_first_error_before_the_hedge_delay_is_not_hedged() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint, policy=RetryPolicy(max_attempts=1))
    await _warm(client, endpoint)
    endpoint.steps.append(_Step(error=400))
    with pytest.raises(ModelCallError) as info:
        await run(client)
    assert (info.value.kind, info.value.attempts) == ("http_400", 1)
    assert len(endpoint.requests) == 1 and _hedges(metrics, "lost") == 0


async def test_the_loser_is_cancelled_and_its_permit_released() -> None:
    registry = QuotaRegistry({"m1": QuotaLimits(max_concurrent=2)})
    quota = registry.get("m1")
    assert quota is not None
    endpoint = _Endpoint()
    client, metrics = _client(endpoint, quotas=registry)
    await _warm(client, endpoint)
    # The first answers while the hedge hangs: the hedge loses and is cancelled.
    endpoint.steps.extend([_Step(after=DELAY * 2), _Step(after=None)])
    task = asyncio.create_task(run(client))
    await asyncio.wait_for(endpoint.two_running.wait(), timeout=2)
    assert quota.in_flight == 2  # the hedge holds a permit of its own
    result = await asyncio.wait_for(task, timeout=2)
    assert result.answer == "answer 0" and result.attempts == 2
    assert endpoint.cancelled == [1] and quota.in_flight == 0 and _no_tasks_left()
    assert (_hedges(metrics, "won"), _hedges(metrics, "lost")) == (0, 1)


async def test_cancelling_the_call_cancels_both_requests() -> None:
    registry = QuotaRegistry({"m1": QuotaLimits(max_concurrent=2)})
    quota = registry.get("m1")
    assert quota is not None
    endpoint = _Endpoint()
    client, _ = _client(endpoint, quotas=registry)
    await _warm(client, endpoint)
    endpoint.steps.extend([_Step(after=None), _Step(after=None)])
    task = asyncio.create_task(run(client))
    await asyncio.wait_for(endpoint.two_running.wait(), timeout=2)
    task.cancel()  # a sibling call of the event failed
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(endpoint.cancelled) == [0, 1] and quota.in_flight == 0 and _no_tasks_left()


async def test_no_hedge_without_a_free_permit() -> None:
    registry = QuotaRegistry({"m1": QuotaLimits(max_concurrent=1)})
    quota = registry.get("m1")
    assert quota is not None
    endpoint = _Endpoint()
    client, metrics = _client(endpoint, quotas=registry)
    await _warm(client, endpoint)
    endpoint.steps.append(_Step(after=DELAY * 3))
    task = asyncio.create_task(run(client))
    waited = 0
    while not task.done():
        waited = max(waited, quota.waiting)
        await asyncio.sleep(0.005)
    result = task.result()
    assert result.answer == "answer 0" and result.attempts == 1
    assert len(endpoint.requests) == 1 and waited == 0  # the hedge never queued for a permit
    assert quota.in_flight == 0 and quota.waiting == 0 and _no_tasks_left()
    assert _hedges(metrics, "won") == _hedges(metrics, "lost") == 0


async def test_more_hedges_go_out_one_delay_apart() -> None:
    endpoint = _Endpoint()
    client, metrics = _client(endpoint, hedge=POLICY.model_copy(update={"max_hedges": 2}))
    await _warm(client, endpoint)
    endpoint.steps.extend([_Step(after=None), _Step(after=None), _Step()])
    started = time.monotonic()
    result = await asyncio.wait_for(run(client), timeout=2)
    assert result.answer == "answer 2" and result.attempts == 3
    assert time.monotonic() - started >= 2 * DELAY
    assert sorted(endpoint.cancelled) == [0, 1] and _no_tasks_left()
    assert (_hedges(metrics, "won"), _hedges(metrics, "lost")) == (1, 1)
