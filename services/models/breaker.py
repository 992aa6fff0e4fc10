"""Circuit breaker per key (a model or endpoint): stop calling what keeps failing.

closed -> open after `failure_threshold` consecutive failures; open -> half_open once
`cooldown_s` has passed; half_open lets exactly one trial call through at a time, whose
success closes the key and whose failure reopens it for another cooldown. Failing fast
while open keeps workers from burning retries, quota and time on a dependency that is down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class _Key:
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    trial_started: float | None = None


class CircuitBreaker:
    """Independent breakers for any number of keys; unknown keys are closed."""

    def __init__(
        self,
        failure_threshold: int = 5,
        cooldown_s: float = 30.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._keys: dict[str, _Key] = {}

    def state(self, key: str) -> BreakerState:
        """The key's state now; an open key reads half_open once its cooldown is over."""
        entry = self._keys.get(key)
        return "closed" if entry is None else self._advance(entry)

    def allow(self, key: str) -> bool:
        """May a call for `key` start now? In half_open a True is the one trial call.

        A trial whose outcome is never recorded (its caller was cancelled) stops counting
        after one cooldown, so the key cannot stay stuck in half_open.
        """
        entry = self._keys.get(key)
        if entry is None:
            return True
        state = self._advance(entry)
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if entry.trial_started is not None and now - entry.trial_started < self.cooldown_s:
            return False
        entry.trial_started = now
        return True

    def record_success(self, key: str) -> None:
        """A call succeeded: resets the failure count; a successful trial closes the key.

        Successes of calls started before the key opened do not close it: only a trial does.
        """
        entry = self._keys.get(key)
        if entry is None:
            return
        state = self._advance(entry)
        if state == "closed":
            del self._keys[key]
        elif state == "half_open" and entry.trial_started is not None:
            del self._keys[key]
            log.info("circuit %s closed: trial call succeeded", key)

    def record_failure(self, key: str, reason: str | None = None) -> None:
        """A call failed; `reason` (e.g. the error kind) goes into the log line if it opens."""
        entry = self._keys.setdefault(key, _Key())
        state = self._advance(entry)
        suffix = f" (last: {reason})" if reason else ""
        if state == "closed":
            entry.failures += 1
            if entry.failures >= self.failure_threshold:
                self._open(entry)
                log.warning(
                    "circuit %s opened for %gs: %d consecutive failures%s",
                    key,
                    self.cooldown_s,
                    entry.failures,
                    suffix,
                )
        elif state == "half_open" and entry.trial_started is not None:
            self._open(entry)
            log.warning(
                "circuit %s reopened for %gs: trial call failed%s", key, self.cooldown_s, suffix
            )

    def reset(self, which: Callable[[str], bool]) -> None:
        """Close every key `which` selects, e.g. those of an endpoint seen answering again."""
        for key in [k for k in self._keys if which(k)]:
            del self._keys[key]
            log.info("circuit %s closed: its endpoint answers again", key)

    def _open(self, entry: _Key) -> None:
        entry.state = "open"
        entry.opened_at = self._clock()
        entry.trial_started = None

    def _advance(self, entry: _Key) -> BreakerState:
        if entry.state == "open" and self._clock() - entry.opened_at >= self.cooldown_s:
            entry.state = "half_open"
        return entry.state
