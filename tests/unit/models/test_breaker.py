"""Circuit breaker state machine on a hand-driven clock."""

from __future__ import annotations

import logging

import pytest

from llmflow.services.models.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, cooldown_s=10.0, clock=clock)


def test_opens_after_consecutive_failures_only(breaker: CircuitBreaker) -> None:
    breaker.record_failure("m")
    breaker.record_failure("m")
    breaker.record_success("m")  # the streak is broken
    breaker.record_failure("m")
    breaker.record_failure("m")
    assert breaker.state("m") == "closed" and breaker.allow("m")
    breaker.record_failure("m")
    assert breaker.state("m") == "open" and not breaker.allow("m")
    assert breaker.state("other") == "closed" and breaker.allow("other")


def test_half_open_allows_one_trial_and_success_closes(
    breaker: CircuitBreaker, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmflow.services.models.breaker")
    for _ in range(3):
        breaker.record_failure("m", "http_503")
    clock.now = 9.9
    assert not breaker.allow("m")
    clock.now = 10.0
    assert breaker.state("m") == "half_open"
    assert breaker.allow("m")  # the trial
    assert not breaker.allow("m")  # only one at a time
    breaker.record_success("m")
    assert breaker.state("m") == "closed" and breaker.allow("m")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "circuit m opened for 10s: 3 consecutive failures (last: http_503)",
        "circuit m closed: trial call succeeded",
    ]


def test_failed_trial_reopens_for_another_cooldown(
    breaker: CircuitBreaker, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmflow.services.models.breaker")
    for _ in range(3):
        breaker.record_failure("m")
    clock.now = 10.0
    assert breaker.allow("m")
    clock.now = 12.0
    breaker.record_failure("m")
    assert breaker.state("m") == "open"
    clock.now = 21.9
    assert not breaker.allow("m")
    clock.now = 22.0
    assert breaker.allow("m")
    assert "reopened for 10s: trial call failed" in caplog.records[-1].getMessage()


def test_late_results_do_not_move_an_open_breaker(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        breaker.record_failure("m")
    breaker.record_success("m")  # a call started before the breaker opened
    assert breaker.state("m") == "open"
    clock.now = 10.0
    breaker.record_success("m")  # half-open but no trial was let through
    breaker.record_failure("m")
    assert breaker.state("m") == "half_open" and breaker.allow("m")


def test_abandoned_trial_expires_after_a_cooldown(breaker: CircuitBreaker, clock: Clock) -> None:
    for _ in range(3):
        breaker.record_failure("m")
    clock.now = 10.0
    assert breaker.allow("m")  # this caller never reports back
    clock.now = 19.9
    assert not breaker.allow("m")
    clock.now = 20.0
    assert breaker.allow("m")


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError, match="cooldown_s"):
        CircuitBreaker(cooldown_s=-1)
