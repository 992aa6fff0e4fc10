"""Every retry decision for model calls, in one function that logs its reason.

The openai SDK's own retries are switched off (`max_retries=0`): this policy replaces them,
so that every retry is counted, waits in line with the shared quotas, honours a total
deadline per call, and tells the quota to back off when the endpoint says Retry-After.
Each HTTP attempt keeps its own timeout (the SDK's 600 s default is never used).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import openai
from pydantic import BaseModel, ConfigDict, Field

from llmflow.services.models.probe import connection_failure
from llmflow.services.models.wire import ErrorAnswer

log = logging.getLogger(__name__)

# 408 timeout, 409 conflict (lock), 429 rate limit; every 5xx is retried too.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


class RetryPolicy(BaseModel):
    """Exponential backoff with full jitter, capped, inside a total deadline per call."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_attempts: int = Field(default=16, ge=1)
    """Attempts per model call and endpoint, the first included."""
    base_delay_s: float = Field(default=0.25, gt=0)
    """Backoff before the second attempt; doubles with each further attempt."""
    max_delay_s: float = Field(default=20.0, gt=0)
    """Cap of one backoff (a longer Retry-After is honoured up to the deadline)."""
    deadline_s: float = Field(default=120.0, gt=0)
    """Total time one call may take, retries and waits included."""
    attempt_timeout_s: float = Field(default=60.0, gt=0)
    """Timeout of one HTTP attempt."""


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """`delay_s` is None when the call must not be retried; `reason` is a metric label."""

    delay_s: float | None
    reason: str
    retry_after_s: float | None = None


def classify(error: BaseException) -> str:
    """A short, stable label for a failed attempt (a metric label and dead-letter kind):
    `http_<status>`, `connection_refused`, `dns`, `timeout`, `connection`, `bad_response`
    (an answer that is not JSON or lacks what the call reads), `error_answer` (a success
    status carrying an error), or the exception's class name for anything that is not an
    API error."""
    if isinstance(error, openai.APIStatusError):
        return f"http_{error.status_code}"
    if isinstance(error, ErrorAnswer):
        return "error_answer"
    if isinstance(error, openai.APIResponseValidationError):
        return "bad_response"
    if isinstance(error, openai.APIConnectionError):
        # Before the timeout test: the aiohttp transport reports a refused connection as one.
        failure = connection_failure(error)
        if failure is not None:
            return failure
        if isinstance(error, openai.APITimeoutError):
            return "timeout"
        return "connection"
    return type(error).__name__


def is_transient(error: BaseException) -> bool:
    """May the same request succeed later? Yes for 408/409/429/5xx, connection failures,
    timeouts and a bad answer (a body cut short or garbled on its way, an endpoint between
    restarts): the endpoint's trouble, not the request's. Other statuses and anything that
    is not an API error (a bug, a cancelled task) are permanent."""
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUSES or error.status_code >= 500
    if isinstance(error, ErrorAnswer):
        return False
    return isinstance(error, openai.APIError)


def retry_after(error: BaseException) -> float | None:
    """The endpoint's Retry-After (`retry-after-ms` first, then seconds), if any."""
    if not isinstance(error, openai.APIStatusError):
        return None
    headers = error.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP date: rare from model APIs; fall back to backoff
    return None


def decide(
    error: BaseException,
    attempt: int,
    remaining_s: float,
    policy: RetryPolicy,
    *,
    call: str,
    rng: random.Random | None = None,
) -> RetryDecision:
    """Retry `error` after `attempt` attempts, with `remaining_s` left of the deadline?"""
    reason = classify(error)
    if not is_transient(error):
        log.info("call %s: %s is permanent, not retried", call, reason)
        return RetryDecision(None, reason)
    if attempt >= policy.max_attempts:
        log.warning("call %s: %s after %d attempts, giving up", call, reason, attempt)
        return RetryDecision(None, reason)
    backoff = policy.base_delay_s * 2 ** (attempt - 1)
    delay = (rng or random).uniform(0, min(policy.max_delay_s, backoff))  # full jitter
    after = retry_after(error)
    if after is not None:
        delay = max(delay, after)
    if delay >= remaining_s:
        log.warning(
            "call %s: %s, next try in %.2f s would pass the deadline, giving up",
            call,
            reason,
            delay,
        )
        return RetryDecision(None, reason, after)
    log.info("call %s: %s on attempt %d, retrying in %.2f s", call, reason, attempt, delay)
    return RetryDecision(delay, reason, after)
