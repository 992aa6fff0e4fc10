"""Is an OpenAI-compatible endpoint there, and does it take our key? One `GET /models`.

A failure names its precise cause. The SDK's own exceptions are too coarse for that (its
aiohttp transport even reports a refused connection as a timeout), so the cause is found by
walking the exception's chain down to the socket error.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import aiohttp
import openai

ConnectionFailure = Literal["connection_refused", "dns"]

_MESSAGE_CHARS = 160  # of an endpoint's error message in a probe's reason


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """`reason` is one line for people; `auth_failed` says the key was rejected (401/403)."""

    ok: bool
    reason: str
    auth_failed: bool = False


async def probe(client: openai.AsyncOpenAI, *, timeout_s: float = 5.0) -> ProbeResult:
    """`GET /models` at `client`'s endpoint within `timeout_s`, without retries. Ok when it
    answers, even 404/405 (a gateway without that route) or 429 (alive, rate-limited); not
    ok on 401/403 (key rejected), any other error status, or no answer."""
    quick = client.with_options(timeout=timeout_s, max_retries=0)
    try:
        async with asyncio.timeout(timeout_s + 1):  # in case a transport overruns its own
            await quick.models.list()
    except openai.APIStatusError as exc:
        return _status_result(exc)
    except openai.APIResponseValidationError:
        return ProbeResult(True, "answers, though not with a model list")
    except (openai.APIConnectionError, TimeoutError) as exc:  # the SDK's timeouts included
        return ProbeResult(False, connection_reason(exc, client.base_url.host, timeout_s))
    return ProbeResult(True, "ok")


def connection_failure(exc: BaseException) -> ConnectionFailure | None:
    """`connection_refused` or `dns` when that is what lies under `exc`, else None."""
    for cause in _chain(exc):
        if isinstance(cause, socket.gaierror):
            return "dns"
        # Happy eyeballs sums up the failed addresses in one OSError carrying their errno.
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return "connection_refused"
    return None


def connection_reason(exc: BaseException, host: str, timeout_s: float) -> str:
    """Why a connection to `host` failed, in a few words: `connection refused`, `DNS lookup
    failed for <host>`, `timed out after <timeout_s> s`, else the most telling error."""
    failure = connection_failure(exc)
    if failure == "connection_refused":
        return "connection refused"
    if failure == "dns":
        return f"DNS lookup failed for {host}"
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return f"timed out after {timeout_s:g} s"
    # The SDK says only "Connection error."; the transport's exception says what happened.
    details = [e for e in _chain(exc) if not isinstance(e, openai.OpenAIError) and str(e)]
    shown = details[0] if details else exc
    return f"{type(shown).__name__}: {shown}"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it was raised from or during, each once, nearest first."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        # aiohttp's connector error holds its socket error apart from the chain, too.
        os_error = current.os_error if isinstance(current, aiohttp.ClientConnectorError) else None
        pending += [e for e in (current.__cause__, current.__context__, os_error) if e is not None]


def _status_result(exc: openai.APIStatusError) -> ProbeResult:
    code = exc.status_code
    if code in {404, 405}:
        return ProbeResult(True, f"HTTP {code}: no /models route, but it answers")
    if code == 429:
        return ProbeResult(True, "HTTP 429: alive, rate-limited")
    return ProbeResult(False, f"HTTP {code}: {_short_message(exc)}", auth_failed=code in {401, 403})


def _short_message(exc: openai.APIStatusError) -> str:
    """The endpoint's own error message (OpenAI's `{"error": {"message": ...}}`), clipped."""
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message.strip():
        message = exc.response.reason_phrase or exc.message
    message = " ".join(message.split())
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 3] + "..."
