"""Client-side model quotas shared by the workers of one consumer group.

Limits are configured for the whole deployment. Each worker enforces `share` of them, the
fraction of input partitions it owns (`share_of`), so the workers never have to talk to
each other: the group's shares sum to at most 1 at every instant (a rebalance first
revokes, dropping shares to 0, then assigns), and every bound below is a sum over workers.

Requests (rpm). Each worker runs a token bucket of capacity 1 (no bursts) refilled at

    share * (rpm - max_workers) / 60 calls per second.

A call takes one whole token. The bucket starts empty when the quota is built and whenever
its share leaves 0, so a restarted or newly assigned worker cannot burst. Bound: in any
closed window [a, a + 60 s] a worker starts at most (tokens held at a, <= 1) + (tokens
accrued during the window), i.e. <= 1 + (rpm - max_workers) * (mean share over the
window). A worker built inside the window held no token at a, so only workers alive at a
add their 1. Summed over at most `max_workers` such workers, with shares summing to <= 1:
starts <= max_workers + (rpm - max_workers) = rpm, in every sliding minute. Hence rpm
must exceed max_workers (ConfigError otherwise); the price is max_workers / rpm of the
throughput.

Tokens (tpm). A deficit bucket refilled at share * tpm / 60 tokens per second whose
balance never goes above 0: a call may start when the balance is back to 0 and is charged
its estimate up front (the balance goes negative); `Permit.settle` corrects the charge to
the actual count once the answer says it. In any window a worker is charged at most its
share of tpm plus the estimate of the last call it started (and whatever that call's
actual count exceeds the estimate by), so the group stays within tpm plus one call's
overshoot per worker.

Concurrency: at most max(1, floor(share * max_concurrent)) permits out at once.

Provider headers: when `x-ratelimit-remaining-*` says the provider's own budget is spent,
or a 429 carried Retry-After (`hold_for`), every caller of the model waits for the
announced reset, so the workers slow down before they are refused instead of after.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType, TracebackType

from pydantic import BaseModel, ConfigDict, Field

from llmflow.errors import ConfigError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Float slack when a sleep ends exactly at the moment a token is due.
_REQUEST_EPS = 1e-9
_TOKEN_EPS = 1e-6

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION = re.compile(
    rf"(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m(?!s))?"
    rf"(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?"
)
_BARE = re.compile(_NUMBER)


def parse_reset(value: str) -> float:
    """Seconds in an `x-ratelimit-reset-*` value: "1s", "6m0s", "20ms", "1h2m3.5s" or "2.5".

    Raises ValueError on anything else, so callers can ignore a header they cannot read.
    """
    text = value.strip()
    if _BARE.fullmatch(text):
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a rate-limit reset duration: {value!r}")
    parts = match.groupdict()
    return (
        float(parts["h"] or 0) * 3600
        + float(parts["m"] or 0) * 60
        + float(parts["s"] or 0)
        + float(parts["ms"] or 0) / 1000
    )


class QuotaLimits(BaseModel):
    """A model's provider limits for the WHOLE deployment; each worker enforces its share."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    rpm: int | None = Field(default=None, gt=0)
    """Requests per minute over every worker together; None means not limited here."""

    tpm: int | None = Field(default=None, gt=0)
    """Tokens per minute (estimates charged at call start) over every worker together."""

    max_concurrent: int | None = Field(default=None, gt=0)
    """Calls in flight at once over every worker together; each worker keeps at least 1."""


def share_of(owned_partitions: int, total_partitions: int) -> float:
    """The fraction of the group's budget a worker owning these partitions may spend."""
    if owned_partitions < 0 or total_partitions < 0 or owned_partitions > total_partitions:
        raise ValueError(f"cannot own {owned_partitions} of {total_partitions} partitions")
    if total_partitions == 0:
        return 0.0
    return owned_partitions / total_partitions


class Permit:
    """One admitted call: report its real token count with `settle`, free it with `release`."""

    __slots__ = ("_charged", "_quota", "_released", "estimate")

    def __init__(self, quota: ModelQuota, estimate: int) -> None:
        self._quota = quota
        self._charged = estimate
        self._released = False
        self.estimate = estimate

    def settle(self, actual_tokens: int) -> None:
        """Replace the estimate charged at start by the actual count; the last call wins."""
        if actual_tokens < 0:
            raise ValueError(f"actual_tokens must be >= 0, got {actual_tokens}")
        self._quota._refund(self._charged - actual_tokens)
        self._charged = actual_tokens

    def release(self) -> None:
        """Free the concurrency slot; calling it again does nothing."""
        if not self._released:
            self._released = True
            self._quota._release()

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ModelQuota:
    """This worker's share of one model's deployment-wide limits (see the module docstring).

    Callers are admitted in arrival order. Only the caller at the head of the line watches
    the clock; it sleeps exactly until the next token, debt repayment or hold expiry, and
    is woken early by `set_share`, `Permit.release` and `Permit.settle`.
    """

    def __init__(
        self,
        name: str,
        limits: QuotaLimits,
        share: float = 1.0,
        *,
        max_workers: int = 4,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if max_workers < 1:
            raise ConfigError(f"quota {name!r}: max_workers must be >= 1, got {max_workers}")
        if limits.rpm is not None and limits.rpm <= max_workers:
            raise ConfigError(
                f"quota {name!r}: rpm={limits.rpm} must exceed max_workers={max_workers}, "
                "since every worker may start one call at the edge of any minute"
            )
        self.name = name
        self.limits = limits
        self.max_workers = max_workers
        self._clock = clock
        self._sleep = sleep
        self._share = 0.0
        self._updated = clock()
        self._requests = 0.0  # request tokens, <= 1
        self._balance = 0.0  # token balance, <= 0
        self._hold_until = -math.inf
        self._in_flight = 0
        self._last_estimate = 0
        self._line: deque[asyncio.Event] = deque()
        self._wait_seconds_total = 0.0
        self._holds_total = 0
        self.set_share(share)

    # -- observability -------------------------------------------------------------------

    @property
    def share(self) -> float:
        return self._share

    @property
    def waiting(self) -> int:
        """Callers blocked in `acquire` right now."""
        return len(self._line)

    @property
    def in_flight(self) -> int:
        """Permits handed out and not released yet."""
        return self._in_flight

    @property
    def wait_seconds_total(self) -> float:
        """Seconds callers spent blocked in `acquire`, summed over finished waits."""
        return self._wait_seconds_total

    @property
    def holds_total(self) -> int:
        """Times provider headers or a Retry-After paused every caller of the model."""
        return self._holds_total

    @property
    def concurrency_limit(self) -> int | None:
        """Permits this worker may hold at once at its current share (None: unlimited)."""
        if self.limits.max_concurrent is None:
            return None
        if self._share == 0:
            return 0
        return max(1, math.floor(self._share * self.limits.max_concurrent + 1e-9))

    # -- control -------------------------------------------------------------------------

    def set_share(self, share: float) -> None:
        """Spend `share` of the deployment's limits from now on (0 stops new calls)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within [0, 1], got {share}")
        self._refill()
        if (self._share == 0) != (share == 0):
            # Leaving 0 (or reaching it) empties the request bucket: a worker that was just
            # assigned partitions must not add a burst on top of the others' full rate.
            self._requests = 0.0
        self._share = share
        self._wake_head()

    def hold_for(self, seconds: float) -> None:
        """Pause every new call of this model for `seconds` (a 429's Retry-After)."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"hold must be a finite number of seconds >= 0, got {seconds}")
        if seconds > 0:
            self._hold_until = max(self._hold_until, self._clock() + seconds)
            self._holds_total += 1
            log.debug("quota %s: holding new calls for %.3fs", self.name, seconds)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Hold new calls when the provider says its own budget is spent until a reset.

        Remaining requests at 0 holds for `x-ratelimit-reset-requests`; remaining tokens
        below the last call's estimate holds for `x-ratelimit-reset-tokens`. Missing or
        unreadable headers are ignored: they only ever tighten the local limits.
        """
        lower = {key.lower(): value for key, value in headers.items()}
        checks = (("requests", 1), ("tokens", self._last_estimate))
        for kind, needed in checks:
            remaining = _number(lower.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is None or remaining >= max(needed, 1):
                continue
            reset = lower.get(f"x-ratelimit-reset-{kind}")
            try:
                seconds = parse_reset(reset) if reset is not None else None
            except ValueError:
                seconds = None
            if seconds is not None:
                self.hold_for(seconds)

    # -- admission -----------------------------------------------------------------------

    def try_acquire(self, estimated_tokens: int) -> Permit | None:
        """A permit if one is free now with nobody waiting, else None (without queueing)."""
        if estimated_tokens < 0:
            raise ValueError(f"estimated_tokens must be >= 0, got {estimated_tokens}")
        if not self._line and self._ready_in() == 0.0:
            return self._take(estimated_tokens)
        return None

    async def acquire(self, estimated_tokens: int) -> Permit:
        """Wait until this worker may start a call charged `estimated_tokens`."""
        if (permit := self.try_acquire(estimated_tokens)) is not None:
            return permit
        me = asyncio.Event()
        self._line.append(me)
        started = self._clock()
        try:
            while True:
                delay = self._ready_in() if self._line[0] is me else None
                if delay == 0.0:
                    break
                me.clear()
                await self._wait(me, delay)
        finally:
            self._line.remove(me)
            self._wait_seconds_total += self._clock() - started
            self._wake_head()
        # No await since the check above: the head takes what it saw was available.
        return self._take(estimated_tokens)

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[Permit]:
        """`acquire` as a context manager that releases the permit on every exit: normal,
        exception or cancellation (a task cancelled while still waiting holds nothing)."""
        permit = await self.acquire(estimated_tokens)
        try:
            yield permit
        finally:
            permit.release()

    # -- internals -----------------------------------------------------------------------

    def _request_rate(self) -> float:
        assert self.limits.rpm is not None
        return self._share * (self.limits.rpm - self.max_workers) / 60

    def _token_rate(self) -> float:
        assert self.limits.tpm is not None
        return self._share * self.limits.tpm / 60

    def _refill(self) -> float:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        if self.limits.rpm is not None:
            self._requests = min(1.0, self._requests + elapsed * self._request_rate())
        if self.limits.tpm is not None:
            self._balance = min(0.0, self._balance + elapsed * self._token_rate())
        return now

    def _ready_in(self) -> float | None:
        """0 when a call may start now, else seconds to wait, or None until something changes."""
        now = self._refill()
        limit = self.concurrency_limit
        if self._share == 0 or (limit is not None and self._in_flight >= limit):
            return None
        delay = self._hold_until - now
        if self.limits.rpm is not None and self._requests < 1.0 - _REQUEST_EPS:
            delay = max(delay, (1.0 - self._requests) / self._request_rate())
        if self.limits.tpm is not None and self._balance < -_TOKEN_EPS:
            delay = max(delay, -self._balance / self._token_rate())
        return max(0.0, delay)

    def _take(self, estimated_tokens: int) -> Permit:
        if self.limits.rpm is not None:
            self._requests -= 1.0
        if self.limits.tpm is not None:
            self._balance -= estimated_tokens
        self._in_flight += 1
        self._last_estimate = estimated_tokens
        return Permit(self, estimated_tokens)

    async def _wait(self, me: asyncio.Event, delay: float | None) -> None:
        if delay is None:
            await me.wait()
            return
        timer = asyncio.create_task(self._ring(me, delay))
        try:
            await me.wait()
        finally:
            timer.cancel()

    async def _ring(self, event: asyncio.Event, delay: float) -> None:
        await self._sleep(delay)
        event.set()

    def _wake_head(self) -> None:
        if self._line:
            self._line[0].set()

    def _release(self) -> None:
        self._in_flight -= 1
        if self.limits.max_concurrent is not None:  # else the head's timer is still right
            self._wake_head()

    def _refund(self, tokens: int) -> None:
        if self.limits.tpm is not None and tokens:
            self._refill()
            self._balance = min(0.0, self._balance + tokens)
            self._wake_head()


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class QuotaRegistry:
    """Every configured model quota of one worker, with one share for all of them.

    Keys are a model name or "endpoint/model". `get` tries the exact key first, then the
    model name after the first "/" (endpoint names contain no "/", model names may), and
    returns None, meaning unlimited, when neither is configured.
    """

    def __init__(
        self,
        limits: Mapping[str, QuotaLimits],
        share: float = 1.0,
        *,
        max_workers: int = 4,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._quotas = {
            key: ModelQuota(key, lim, share, max_workers=max_workers, clock=clock, sleep=sleep)
            for key, lim in limits.items()
        }

    @property
    def quotas(self) -> Mapping[str, ModelQuota]:
        """Configured quotas by key, for metrics."""
        return MappingProxyType(self._quotas)

    def get(self, key: str) -> ModelQuota | None:
        """The quota for "endpoint/model" or "model" (see the class docstring); None: unlimited."""
        quota = self._quotas.get(key)
        if quota is None and "/" in key:
            quota = self._quotas.get(key.split("/", 1)[1])
        return quota

    def set_share(self, share: float) -> None:
        """Apply this worker's new partition share to every model (call on each rebalance)."""
        for quota in self._quotas.values():
            quota.set_share(share)
