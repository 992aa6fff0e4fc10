"""Model quotas on virtual time: minutes of traffic simulated in milliseconds."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math

import pytest
from pydantic import ValidationError

from llmflow.errors import ConfigError
from llmflow.services.models.quotas import (
    ModelQuota,
    Permit,
    QuotaLimits,
    QuotaRegistry,
    parse_reset,
    share_of,
)


class FakeTime:
    """A virtual clock: `sleep` parks the caller, `run` fires timers in deadline order.

    Before each timer fires, every task that can run is let run (a few loop turns), so the
    order of events is the one real time would give, without any real waiting.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._seq), future))
        await future

    async def idle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def run(self, until: float) -> None:
        """Advance to `until`, firing every timer due on the way."""
        while True:
            await self.idle()
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)  # cancelled sleepers
            if not self._timers or self._timers[0][0] > until:
                self.now = max(self.now, until)
                await self.idle()
                return
            deadline, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, deadline)
            future.set_result(None)

    def quota(self, limits: QuotaLimits, share: float = 1.0, max_workers: int = 4) -> ModelQuota:
        return ModelQuota(
            "m", limits, share, max_workers=max_workers, clock=self.clock, sleep=self.sleep
        )


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _callers(
    ft: FakeTime, quota: ModelQuota, starts: list[float], n: int = 8, duration: float = 0.7
) -> list[asyncio.Task[None]]:
    async def caller() -> None:
        while True:
            async with quota.slot(10):
                starts.append(ft.now)
                await ft.sleep(duration)

    return [asyncio.create_task(caller()) for _ in range(n)]


def _max_in_any_minute(starts: list[float]) -> int:
    """Most starts within any closed window [t, t + 60] (windows starting at a start suffice)."""
    ordered = sorted(starts)
    return max((bisect.bisect_right(ordered, t + 60) - i for i, t in enumerate(ordered)), default=0)


# -- parsing and shares -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("7", 7.0),
        ("2.25", 2.25),
        ("1m", 60.0),
        ("1s500ms", 1.5),
        (" 3s ", 3.0),
    ],
)
def test_parse_reset(value: str, seconds: float) -> None:
    assert parse_reset(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "s", "abc", "-1s", "1x", "1s2m", "nan", "1..5s", "ms"])
def test_parse_reset_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="reset"):
        parse_reset(value)


def test_share_of() -> None:
    assert share_of(2, 4) == 0.5
    assert share_of(0, 0) == 0.0
    assert share_of(3, 3) == 1.0
    with pytest.raises(ValueError, match="partitions"):
        share_of(5, 4)


def test_limits_validate() -> None:
    assert QuotaLimits().rpm is None
    with pytest.raises(ValidationError):
        QuotaLimits(rpm=0)
    with pytest.raises(ValidationError):
        QuotaLimits.model_validate({"rpm": 10, "burst": 3})
    with pytest.raises(ConfigError, match="max_workers"):
        ModelQuota("m", QuotaLimits(rpm=4), max_workers=4)


# -- requests per minute ----------------------------------------------------------------


async def test_rpm_two_workers_never_exceed_any_minute(ft: FakeTime) -> None:
    limits = QuotaLimits(rpm=120)
    a, b = ft.quota(limits, 0.5), ft.quota(limits, 0.5)
    starts: list[float] = []
    tasks = _callers(ft, a, starts) + _callers(ft, b, starts)
    await ft.run(until=300)
    assert a.waiting and b.waiting >= 7  # callers queue up
    # No spinning: besides each call's own sleep, one timer per admitted call.
    assert ft.sleeps <= 2 * len(starts) + 2
    await _cancel(tasks)

    assert _max_in_any_minute(starts) <= 120
    after_first = [t for t in starts if t >= 60]
    assert len(after_first) / 4 >= 0.9 * 120
    assert a.wait_seconds_total > 0


async def test_rpm_worst_case_burst_stays_within_limit(ft: FakeTime) -> None:
    """Idle workers holding a full token each, then a flood: still <= rpm per minute."""
    limits = QuotaLimits(rpm=20)
    quotas = [ft.quota(limits, 0.25, max_workers=4) for _ in range(4)]
    await ft.run(until=120)  # every bucket fills up to its single token
    starts: list[float] = []
    tasks = [t for q in quotas for t in _callers(ft, q, starts, n=4, duration=0.1)]
    await ft.run(until=420)
    await _cancel(tasks)
    assert _max_in_any_minute(starts) <= 20
    assert sum(1 for t in starts if 120 <= t <= 180) == 20  # the bound is reached, not beaten


async def test_rpm_share_change_mid_run(ft: FakeTime) -> None:
    limits = QuotaLimits(rpm=120)
    a, b = ft.quota(limits, 1.0), ft.quota(limits, 0.0)
    starts_a: list[float] = []
    starts_b: list[float] = []
    tasks = _callers(ft, a, starts_a) + _callers(ft, b, starts_b)
    await ft.run(until=150)
    assert not starts_b and b.waiting == 8
    a.set_share(0.5)  # revoked first: the shares never sum above 1
    b.set_share(0.5)
    await ft.run(until=300)
    a.set_share(0.0)  # and back: a rebalance passes through 0
    await ft.run(until=301)
    a.set_share(1.0)
    b.set_share(0.0)
    await ft.run(until=480)
    await _cancel(tasks)

    assert _max_in_any_minute(starts_a + starts_b) <= 120
    assert starts_b and min(starts_b) > 150 and max(starts_b) <= 301
    assert sum(1 for t in starts_a + starts_b if 180 <= t < 240) >= 0.9 * 120


async def test_share_zero_blocks_and_resumes(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(), share=0.0)
    task = asyncio.create_task(quota.acquire(1))
    await ft.run(until=100)
    assert not task.done() and quota.waiting == 1
    quota.set_share(0.3)
    await ft.idle()
    assert task.done() and quota.in_flight == 1 and quota.waiting == 0
    assert quota.wait_seconds_total == pytest.approx(100)


async def test_new_share_starts_with_empty_bucket(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(rpm=64), share=0.0)  # (64 - 4) / 60 = 1 call/s at share 1
    await ft.run(until=1000)
    quota.set_share(0.5)
    task = asyncio.create_task(quota.acquire(1))
    await ft.run(until=1001.9)
    assert not task.done()
    await ft.run(until=1002)
    assert task.done()


async def test_acquire_is_fifo_and_cancellation_safe(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(rpm=64))  # one call per second
    order: list[int] = []

    async def take(i: int) -> None:
        await quota.acquire(1)
        order.append(i)

    tasks = [asyncio.create_task(take(i)) for i in range(4)]
    await ft.idle()
    tasks[1].cancel()
    await ft.run(until=10)
    assert order == [0, 2, 3] and quota.waiting == 0


# -- concurrency ------------------------------------------------------------------------


async def test_concurrency_cap_follows_share(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(max_concurrent=10), share=0.3)
    assert quota.concurrency_limit == 3
    permits: list[Permit] = []

    async def take() -> None:
        permits.append(await quota.acquire(1))

    tasks = [asyncio.create_task(take()) for _ in range(5)]
    await ft.run(until=5)
    assert len(permits) == 3 and quota.waiting == 2 and quota.in_flight == 3

    quota.set_share(0.1)  # floor(1.0) = 1: nothing new until in flight drops below 1
    permits[0].release()
    permits[0].release()  # idempotent
    await ft.idle()
    assert quota.in_flight == 2 and len(permits) == 3

    quota.set_share(0.01)
    assert quota.concurrency_limit == 1  # a worker with any share keeps one slot
    permits[1].release()
    permits[2].release()
    await ft.idle()
    assert len(permits) == 4 and quota.in_flight == 1
    await _cancel(tasks)


async def test_try_acquire_takes_a_free_permit_and_never_queues(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(max_concurrent=1))
    first = quota.try_acquire(1)
    assert first is not None and quota.in_flight == 1
    assert quota.try_acquire(1) is None and quota.waiting == 0  # full: no permit, no queue
    waiter = asyncio.create_task(quota.acquire(1))
    await ft.run(until=1)
    first.release()
    assert quota.try_acquire(1) is None  # the one waiting goes first
    await ft.run(until=2)
    assert waiter.done() and quota.in_flight == 1
    waiter.result().release()
    assert quota.try_acquire(1) is not None


async def test_slot_releases_on_error(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(max_concurrent=1))
    seen: list[int] = []

    async def failing_call() -> None:
        async with quota.slot(5):
            seen.append(quota.in_flight)
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await failing_call()
    assert seen == [1]
    assert quota.in_flight == 0
    async with await quota.acquire(5) as permit:
        assert quota.in_flight == 1 and permit.estimate == 5
    assert quota.in_flight == 0


async def test_slot_releases_when_cancelled_inside(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(max_concurrent=1))
    inside = asyncio.Event()

    async def call() -> None:
        async with quota.slot(5):
            inside.set()
            await asyncio.Event().wait()  # an HTTP request that never answers

    holder = asyncio.create_task(call())
    await inside.wait()
    waiter = asyncio.create_task(quota.acquire(5))
    await ft.idle()
    assert quota.in_flight == 1 and quota.waiting == 1
    holder.cancel()
    await ft.idle()
    assert holder.cancelled() and waiter.done()  # the freed slot went to the next in line
    waiter.result().release()
    assert quota.in_flight == 0


# -- tokens per minute ------------------------------------------------------------------


async def test_tpm_deficit_and_settle(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(tpm=6000))  # 100 tokens/s at share 1
    first = await quota.acquire(500)  # balance 0 -> -500: one call may overshoot
    second = asyncio.create_task(quota.acquire(100))
    await ft.run(until=4.9)
    assert not second.done()
    await ft.run(until=5.0)
    assert second.done()  # after 500 / 100 s

    third = asyncio.create_task(quota.acquire(100))
    await ft.run(until=5.5)
    assert not third.done()  # balance -100 + 50
    first.settle(550)  # 50 more than charged: more debt
    await ft.run(until=6.4)
    assert not third.done()
    await ft.run(until=6.5)
    assert third.done()

    permit = third.result()  # balance -100; settling a 100-token estimate at 20 refunds 80
    fourth = asyncio.create_task(quota.acquire(1))
    await ft.idle()
    assert not fourth.done()
    permit.settle(20)
    await ft.run(until=6.7)
    assert fourth.done()


async def test_tpm_balance_never_builds_credit(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits(tpm=6000))
    await ft.run(until=600)  # ten idle minutes give no burst allowance
    await quota.acquire(100)
    follow = asyncio.create_task(quota.acquire(100))
    await ft.run(until=600.99)
    assert not follow.done()
    await ft.run(until=601)
    assert follow.done()


async def test_tpm_window_bound_with_two_workers(ft: FakeTime) -> None:
    limits = QuotaLimits(tpm=12_000)
    charged: list[tuple[float, int]] = []
    tasks: list[asyncio.Task[None]] = []

    async def caller(quota: ModelQuota, size: int) -> None:
        while True:
            async with quota.slot(size):
                charged.append((ft.now, size))
                await ft.sleep(0.3)

    for quota, size in ((ft.quota(limits, 0.5), 700), (ft.quota(limits, 0.5), 130)):
        tasks += [asyncio.create_task(caller(quota, size)) for _ in range(4)]
    await ft.run(until=300)
    await _cancel(tasks)

    times = [t for t, _ in charged]
    for i, t in enumerate(times):
        window = sum(size for _, size in charged[i : bisect.bisect_right(times, t + 60)])
        assert window <= 12_000 + 700 + 130
    assert sum(size for t, size in charged if 60 <= t < 240) / 3 >= 0.95 * 12_000


# -- provider headers -------------------------------------------------------------------


async def test_header_hold_delays_next_acquire(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits())
    await quota.acquire(10)
    quota.observe_headers(
        {"X-RateLimit-Remaining-Requests": "0", "x-ratelimit-reset-requests": "2s"}
    )
    assert quota.holds_total == 1
    task = asyncio.create_task(quota.acquire(10))
    await ft.run(until=1.99)
    assert not task.done()
    await ft.run(until=2.0)
    assert task.done() and ft.now == 2.0


async def test_header_token_hold_uses_last_estimate(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits())
    await quota.acquire(300)
    quota.observe_headers({"x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "1s"})
    assert quota.holds_total == 0
    quota.observe_headers(
        {"x-ratelimit-remaining-tokens": "299", "x-ratelimit-reset-tokens": "6m0s"}
    )
    assert quota.holds_total == 1
    task = asyncio.create_task(quota.acquire(1))
    await ft.run(until=359)
    assert not task.done()
    await ft.run(until=360)
    assert task.done()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-ratelimit-remaining-requests": "0"},
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"},
        {"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "2s"},
        {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "2s"},
    ],
)
async def test_headers_that_do_not_hold(ft: FakeTime, headers: dict[str, str]) -> None:
    quota = ft.quota(QuotaLimits())
    quota.observe_headers(headers)
    assert quota.holds_total == 0
    await asyncio.wait_for(quota.acquire(1), timeout=1)


async def test_hold_for_retry_after_pauses_every_caller(ft: FakeTime) -> None:
    quota = ft.quota(QuotaLimits())
    quota.hold_for(3)
    quota.hold_for(1)  # a shorter hold does not shorten the longer one
    starts: list[float] = []

    async def call() -> None:
        async with quota.slot(1):
            starts.append(ft.now)

    tasks = [asyncio.create_task(call()) for _ in range(3)]
    await ft.run(until=10)
    await asyncio.gather(*tasks)
    assert starts == [3.0, 3.0, 3.0] and quota.holds_total == 2
    with pytest.raises(ValueError, match="hold"):
        quota.hold_for(math.inf)


# -- registry ---------------------------------------------------------------------------


async def test_registry_lookup_and_share(ft: FakeTime) -> None:
    registry = QuotaRegistry(
        {"gpt-4o": QuotaLimits(rpm=100), "azure/gpt-4o": QuotaLimits(rpm=50)},
        clock=ft.clock,
        sleep=ft.sleep,
    )
    plain, azure = registry.get("gpt-4o"), registry.get("azure/gpt-4o")
    assert plain is not None and azure is not None and plain is not azure
    assert registry.get("openai/gpt-4o") is plain  # endpoint not configured: the model's
    assert registry.get("other") is None and registry.get("ep/org/other") is None
    assert set(registry.quotas) == {"gpt-4o", "azure/gpt-4o"}

    registry.set_share(0.0)
    assert plain.share == 0.0 and azure.share == 0.0
    task = asyncio.create_task(azure.acquire(1))
    await ft.idle()
    assert azure.waiting == 1
    registry.set_share(1.0)
    await ft.run(until=2)
    assert task.done() and azure.waiting == 0
