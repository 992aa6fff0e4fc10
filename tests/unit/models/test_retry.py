from __future__ import annotations

import random

import httpx2
import openai
import pytest

from llmflow.services.models.retry import RetryPolicy, classify, decide, retry_after

REQUEST = httpx2.Request("POST", "http://model/v1/chat/completions")


def _status(code: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    response = httpx2.Response(code, headers=headers or {}, request=REQUEST)
    return openai.APIStatusError("failed", response=response, body=None)


POLICY = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, max_attempts=5)


@pytest.mark.parametrize("code", [408, 409, 429, 500, 502, 503])
def test_transient_statuses_are_retried(code: int) -> None:
    decision = decide(_status(code), 1, 60, POLICY, call="c", rng=random.Random(0))
    assert decision.delay_s is not None and 0 <= decision.delay_s <= 1.0
    assert decision.reason == f"http_{code}"


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422])
def test_other_client_errors_are_not(code: int) -> None:
    assert decide(_status(code), 1, 60, POLICY, call="c").delay_s is None


def test_timeouts_and_connection_errors_are_retried() -> None:
    for error in (openai.APITimeoutError(REQUEST), openai.APIConnectionError(request=REQUEST)):
        decision = decide(error, 1, 60, POLICY, call="c")
        assert decision.delay_s is not None
        assert decision.reason == classify(error) in {"timeout", "connection"}


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)]:
        delays = [
            decide(_status(500), attempt, 60, POLICY, call="c", rng=rng).delay_s for _ in range(200)
        ]
        assert all(d is not None and 0 <= d <= cap for d in delays)
        assert max(d for d in delays if d is not None) > cap * 0.8


def test_retry_after_is_honoured_and_ms_wins() -> None:
    assert retry_after(_status(429, {"retry-after": "3"})) == 3.0
    assert retry_after(_status(429, {"retry-after": "3", "retry-after-ms": "250"})) == 0.25
    assert retry_after(_status(429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    decision = decide(_status(429, {"retry-after": "5"}), 1, 60, POLICY, call="c")
    assert decision.delay_s == 5.0 and decision.retry_after_s == 5.0


def test_attempts_and_deadline_end_retries() -> None:
    assert decide(_status(500), 5, 60, POLICY, call="c").delay_s is None
    late = decide(_status(429, {"retry-after": "10"}), 1, 9.5, POLICY, call="c")
    assert late.delay_s is None and late.retry_after_s == 10.0


def test_bugs_are_not_retried() -> None:
    assert decide(ValueError("bug"), 1, 60, POLICY, call="c").delay_s is None
