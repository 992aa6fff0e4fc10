"""Model calls through the openai SDK, against any OpenAI-compatible endpoint.

The SDK sends each request (auth, base URL, headers, timeouts, error types, the aiohttp
transport); `wire.py` builds its bytes and reads the answer, which costs a fraction of the
CPU of the SDK's typed `create()` (`python -m dev.bench.call_path`).

One call = its targets in order (the model, then its fallbacks) -> for each target whose
circuit is closed: attempts under the shared quota, retried by `retry.decide` -> parse and,
for a declared schema, validate (one repair request if the answer breaks it). An attempt
that runs past the usual latency of its endpoint/model is hedged: the same request goes out
again, and the first answer wins (`hedging.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import httpx2
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient, RequestOptions

from llmflow.errors import LlmflowError
from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.models.breaker import CircuitBreaker
from llmflow.services.models.costs import Price, call_cost
from llmflow.services.models.hedging import HedgeDelays, HedgePolicy
from llmflow.services.models.metrics import ModelMetrics
from llmflow.services.models.probe import ProbeResult, probe
from llmflow.services.models.quotas import ModelQuota, Permit, QuotaRegistry
from llmflow.services.models.retry import RetryPolicy, decide, is_transient
from llmflow.services.models.structured import SchemaViolation, parse_answer, repair_messages
from llmflow.services.models.tokens import count_prompt_tokens, count_text_tokens
from llmflow.services.models.wire import (
    CHAT_PATH,
    EMBEDDINGS_PATH,
    Answer,
    chat_answer,
    chat_content,
    embedding_answer,
    embeddings_content,
)
from llmflow.topologies.spec import ModelCall, Target, Topology

log = logging.getLogger(__name__)

# Completion budget assumed for the quota when a call sets no max_tokens.
_DEFAULT_COMPLETION_ESTIMATE = 256


# The SDK words these as "Connection error." or even "Request timed out."; say what it was.
_CONNECTION_FAILURES = {"connection_refused": "connection refused", "dns": "DNS lookup failed"}

# Statuses that are about the endpoint, not the request: a wrong key, no such model or path.
ENDPOINT_STATUSES = frozenset({401, 403, 404})


class ModelCallError(LlmflowError):
    """A model call failed for good; `kind` is stable, `transient` says retries ran out.

    `endpoint_down` says the failure is the endpoint's (unreachable, 5xx, 429, timeouts,
    401/403/404, answers that are not JSON or lack `choices`), not the event's: the worker
    then waits for the endpoint instead of dead-lettering the event. `endpoints` are the
    ones the call tried.
    """

    def __init__(
        self,
        call: str,
        kind: str,
        message: str,
        *,
        transient: bool,
        attempts: int = 0,
        endpoint_down: bool | None = None,
    ) -> None:
        self.call = call
        self.kind = kind
        self.transient = transient
        self.attempts = attempts  # HTTP requests made (and paid) before giving up
        self.endpoint_down = transient if endpoint_down is None else endpoint_down
        self.endpoints: tuple[str, ...] = ()
        super().__init__(f"call {call!r}: {message}")


def call_id(event_id: str, topology: Topology, call: ModelCall) -> str:
    """Same event, topology version, call and prompt version -> same id (the pay-once key)."""
    parts = (event_id, topology.name, topology.version, call.name, call.prompt.version)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def make_openai_client(
    base_url: str,
    api_key: str,
    policy: RetryPolicy,
    transport: Literal["aiohttp", "httpx"] = "aiohttp",
) -> AsyncOpenAI:
    """SDK retries off: `retry.decide` is the one retry policy (it logs, counts and waits
    in line with the quotas). The aiohttp transport holds up better at high concurrency."""
    return AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "unset",
        timeout=policy.attempt_timeout_s,
        max_retries=0,
        http_client=DefaultAioHttpClient() if transport == "aiohttp" else None,
    )


_Reply = tuple[Answer, Any]  # an answer and its response headers


class ModelClient:
    """Runs declared calls with their rendered prompts; reports answer, tokens, cost, time."""

    def __init__(
        self,
        clients: dict[str, AsyncOpenAI],
        *,
        policy: RetryPolicy,
        quotas: QuotaRegistry | None = None,
        breaker: CircuitBreaker | None = None,
        prices: dict[str, Price] | None = None,
        metrics: ModelMetrics | None = None,
        hedge: HedgePolicy | None = None,
    ) -> None:
        self._clients = clients
        self._policy = policy
        self._quotas = quotas or QuotaRegistry({})
        self._breaker = breaker or CircuitBreaker()
        self._prices = prices or {}
        self._metrics = metrics
        self._hedging = HedgeDelays(hedge or HedgePolicy())

    @property
    def quotas(self) -> QuotaRegistry:
        return self._quotas

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()

    async def run(
        self,
        call: ModelCall,
        *,
        call_id: str,
        system: str | None,
        user: str,
        image_urls: list[str],
    ) -> ModelCallResult:
        started = time.perf_counter()
        request = _request_body(call, system, user, image_urls)
        attempts = 0
        failure: ModelCallError | None = None
        for n, target in enumerate(call.targets):
            if not self._breaker.allow(target.key):
                failure = failure or ModelCallError(
                    call.name, "circuit_open", f"{target.key} is cooling down", transient=True
                )
                continue
            try:
                answer, used, repaired = await self._run_target(call, target, request, call_id)
            except ModelCallError as error:
                attempts += error.attempts
                if not error.endpoint_down:
                    self._count_call(target, "failed")
                    raise  # a bad request stays bad on any endpoint
                self._breaker.record_failure(target.key, error.kind)
                failure = error
                continue
            self._breaker.record_success(target.key)
            attempts += used
            if n and self._metrics:
                self._metrics.fallbacks.labels(call.name).inc()
            self._count_call(target, "ok")
            return self._result(call, call_id, target, answer, attempts, repaired, started)
        assert failure is not None  # every call has at least one target
        failure.endpoints = tuple(dict.fromkeys(t.endpoint for t in call.targets))
        self._count_call(call.targets[0], "failed")
        raise failure

    def reset_circuits(self, endpoints: tuple[str, ...]) -> None:
        """Close the circuits of `endpoints` (they answered a probe): calls go out again."""
        self._breaker.reset(lambda key: key.split("/", 1)[0] in endpoints)

    async def probe(self, endpoint: str) -> ProbeResult:
        """Does `endpoint` answer (`GET /models`)?"""
        client = self._clients.get(endpoint)
        if client is None:
            return ProbeResult(False, f"no endpoint {endpoint!r}", False)
        return await probe(client)

    def _result(
        self,
        call: ModelCall,
        call_id: str,
        target: Target,
        answer: tuple[Any, Answer],
        attempts: int,
        repaired: bool,
        started: float,
    ) -> ModelCallResult:
        value, raw = answer
        cost = call_cost(self._prices, raw.model, raw.tokens_in, raw.tokens_out)
        elapsed = time.perf_counter() - started
        if self._metrics:
            m = self._metrics
            m.tokens.labels(raw.model, "in").inc(raw.tokens_in)
            m.tokens.labels(raw.model, "out").inc(raw.tokens_out)
            m.call_seconds.labels(raw.model).observe(elapsed)
        return ModelCallResult(
            name=call.name,
            kind=call.kind,
            call_id=call_id,
            model=raw.model,
            endpoint=target.endpoint,
            prompt_version=call.prompt.version,
            answer=value,
            tokens_in=raw.tokens_in,
            tokens_out=raw.tokens_out,
            latency_ms=round(elapsed * 1000, 3),
            attempts=attempts,
            repaired=repaired,
            cost_usd=cost,
        )

    async def _run_target(
        self, call: ModelCall, target: Target, request: dict[str, Any], call_id: str
    ) -> tuple[tuple[Any, Answer], int, bool]:
        """(parsed answer, HTTP attempts, repaired) from one target."""
        raw, attempts = await self._with_retries(call, target, request, call_id)
        if call.kind == "embedding":
            return (raw.embedding, raw), attempts, False
        if call.output_schema is None:
            return (raw.text, raw), attempts, False
        try:
            return (parse_answer(raw.text, call.output_schema), raw), attempts, False
        except SchemaViolation as first:
            # One repair: show the model its answer and what is wrong with it.
            messages = repair_messages(request["messages"], raw.text, first.message)
            fixed, more = await self._with_retries(
                call, target, {**request, "messages": messages}, call_id
            )
            attempts += more
            tokens = (raw.tokens_in + fixed.tokens_in, raw.tokens_out + fixed.tokens_out)
            merged = Answer(fixed.text, None, fixed.model, *tokens)
            try:
                value = parse_answer(fixed.text, call.output_schema)
            except SchemaViolation as second:
                self._count_repair(target.model, "failed")
                raise ModelCallError(
                    call.name,
                    "schema_violation",
                    f"answer broke its schema twice: {second.message}",
                    transient=False,
                    attempts=attempts,
                ) from second
            self._count_repair(target.model, "repaired")
            return (value, merged), attempts, True

    def _count_repair(self, model: str, result: str) -> None:
        if self._metrics:
            self._metrics.repairs.labels(model, result).inc()

    async def _with_retries(
        self, call: ModelCall, target: Target, request: dict[str, Any], call_id: str
    ) -> tuple[Answer, int]:
        """One answer from `target`, retrying per the policy, inside the call's deadline."""
        client = self._clients.get(target.endpoint)
        if client is None:
            raise ModelCallError(
                call.name, "unknown_endpoint", f"no endpoint {target.endpoint!r}", transient=False
            )
        quota = self._quotas.get(target.key) or self._quotas.get(target.model)
        # Counting tokens costs CPU on every call; only a quota needs the estimate.
        estimate = _estimate_tokens(call, request) if quota is not None else 0
        deadline = time.monotonic() + self._policy.deadline_s
        attempt = 0
        requests = 0  # HTTP requests sent, hedges included: each may be billed
        while True:
            attempt += 1
            outcome, sent = await self._attempt(
                client, call, target, request, call_id, quota, estimate
            )
            requests += sent
            if not isinstance(outcome, openai.APIError):
                answer, headers = outcome
                if quota is not None:
                    quota.observe_headers(headers)
                self._count_attempt(target, "ok")
                return answer, requests
            failure = outcome
            # Out of the permit: the backoff below must not hold a concurrency slot.
            decision = decide(
                failure, attempt, deadline - time.monotonic(), self._policy, call=call.name
            )
            self._count_attempt(target, decision.reason)
            if decision.delay_s is None:
                raise ModelCallError(
                    call.name,
                    decision.reason,
                    _CONNECTION_FAILURES.get(decision.reason, str(failure)),
                    transient=is_transient(failure),
                    attempts=requests,
                    endpoint_down=is_transient(failure) or _status(failure) in ENDPOINT_STATUSES,
                ) from failure
            if quota is not None and decision.retry_after_s:
                quota.hold_for(decision.retry_after_s)  # every caller backs off together
            if self._metrics:
                self._metrics.retries.labels(target.model, decision.reason).inc()
            await asyncio.sleep(decision.delay_s)

    async def _attempt(
        self,
        client: AsyncOpenAI,
        call: ModelCall,
        target: Target,
        request: dict[str, Any],
        call_id: str,
        quota: ModelQuota | None,
        estimate: int,
    ) -> tuple[_Reply | openai.APIError, int]:
        """One attempt: (the answer or the API error for the retry policy, requests sent).

        The request runs under a quota permit; when it runs past the hedge delay of its
        endpoint/model, hedges go out with permits of their own and the first answer wins.
        """

        def send(
            permit: Permit | None, request_timeout_s: float | None = None
        ) -> Coroutine[Any, Any, _Reply]:
            return self._send(permit, client, call, target, request, call_id, request_timeout_s)

        # The permit is released on every way out of the block: an answer, an API error,
        # a cancellation (a sibling call of the event failed) or any other exception.
        # An answer settles it to the real tokens, an API error to 0; otherwise the
        # estimate stays charged, since the endpoint may have counted the request.
        async with _slot(quota, estimate) as permit:
            started = time.monotonic()
            delay = self._hedging.delay(target.key)
            if delay is None:
                try:
                    reply = await send(permit)
                except openai.APIError as exc:
                    return exc, 1
                self._hedging.observe(target.key, time.monotonic() - started)
                return reply, 1

            hedges: list[asyncio.Task[Any] | None] = []  # hedges sent, by their tasks

            async def hedge() -> _Reply | None:
                """The same request under a permit of its own; None if none is free now."""
                # A permit now or no hedge: a due call already runs, so the hedge must
                # neither queue behind nor ahead of other calls.
                hedge_permit = quota.try_acquire(estimate) if quota is not None else None
                if quota is not None and hedge_permit is None:
                    log.debug("call %s: no quota permit free, not hedged", call.name)
                    return None
                hedges.append(asyncio.current_task())
                try:
                    # The hedge shares the attempt's timeout: it ends when the first would.
                    left = self._policy.attempt_timeout_s - (time.monotonic() - started)
                    return await send(hedge_permit, max(left, 0.001))
                finally:
                    if hedge_permit is not None:
                        hedge_permit.release()

            policy = self._hedging.policy
            outcome = await _race(send(permit), hedge, started, delay, policy.max_hedges)
            if not isinstance(outcome.result, openai.APIError):
                self._hedging.observe(target.key, time.monotonic() - started)
            for task in hedges:
                won = task is not None and task is outcome.winner
                self._count_hedge(target.model, "won" if won else "lost")
            return outcome.result, 1 + len(hedges)

    async def _send(
        self,
        permit: Permit | None,
        client: AsyncOpenAI,
        call: ModelCall,
        target: Target,
        request: dict[str, Any],
        call_id: str,
        request_timeout_s: float | None,
    ) -> _Reply:
        """One HTTP request under `permit`, settling the permit to what the answer used."""
        try:
            answer, headers = await self._request(
                client, call, target, request, call_id, request_timeout_s
            )
        except openai.APIError:
            if permit is not None:
                permit.settle(0)
            raise
        if permit is not None:
            permit.settle(answer.tokens_in + answer.tokens_out)
        return answer, headers

    def _count_hedge(self, model: str, outcome: str) -> None:
        if self._metrics:
            self._metrics.hedges.labels(model, outcome).inc()

    def _count_attempt(self, target: Target, status: str) -> None:
        if self._metrics:
            self._metrics.attempts.labels(target.model, target.endpoint, status).inc()

    def _count_call(self, target: Target, status: str) -> None:
        if self._metrics:
            self._metrics.calls.labels(target.model, target.endpoint, status).inc()

    async def _request(
        self,
        client: AsyncOpenAI,
        call: ModelCall,
        target: Target,
        request: dict[str, Any],
        call_id: str,
        request_timeout_s: float | None = None,
    ) -> _Reply:
        """One HTTP request; a hedge passes the time left of its attempt.

        `post` with `cast_to=httpx2.Response` keeps the SDK's auth, headers, timeouts and
        error types but skips its request transform and response models (`wire.py`).
        """
        options: RequestOptions = {
            "headers": {"x-llmflow-call-id": call_id},
            "security": {"bearer_auth": True},  # what the SDK's own create() asks for
        }
        if request_timeout_s is not None:
            options["timeout"] = request_timeout_s
        if call.kind == "embedding":
            response = await client.post(
                EMBEDDINGS_PATH,
                cast_to=httpx2.Response,
                content=embeddings_content(target.model, request),
                options=options,
            )
            return embedding_answer(response, target.model), response.headers
        response = await client.post(
            CHAT_PATH,
            cast_to=httpx2.Response,
            content=chat_content(target.model, request),
            options=options,
        )
        return chat_answer(response, target.model), response.headers


@dataclass(frozen=True, slots=True)
class _Raced:
    """What a hedged attempt ended with, and the task whose answer was kept (if any)."""

    result: _Reply | openai.APIError
    winner: asyncio.Task[Any] | None


async def _race(
    first: Coroutine[Any, Any, _Reply],
    hedge: Callable[[], Coroutine[Any, Any, _Reply | None]],
    started: float,
    delay: float,
    max_hedges: int,
) -> _Raced:
    """The first answer of `first` and of up to `max_hedges` hedges, the n-th started
    `n * delay` s after `started` while no answer has come (a hedge returns None when it
    could not be sent). An API error is a result only once every request has failed: the
    first one is returned. Requests still running are cancelled and awaited on every way
    out, so no task outlives the attempt; any other exception propagates."""
    tasks: list[asyncio.Task[_Reply | None]] = [asyncio.create_task(first)]
    running: set[asyncio.Task[_Reply | None]] = set(tasks)
    errors: list[openai.APIError] = []
    try:
        while running:
            timeout = None
            if len(tasks) <= max_hedges:
                timeout = max(0.0, started + delay * len(tasks) - time.monotonic())
            done, running = await asyncio.wait(
                running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                task = asyncio.create_task(hedge())
                tasks.append(task)
                running.add(task)
                continue
            winner: tuple[asyncio.Task[Any], _Reply] | None = None
            for task in (t for t in tasks if t in done):  # in the order they were sent
                error = task.exception()
                if isinstance(error, openai.APIError):
                    errors.append(error)
                elif error is not None:
                    raise error
                elif (reply := task.result()) is not None and winner is None:
                    winner = (task, reply)
            if winner is not None:
                return _Raced(winner[1], winner[0])
        assert errors  # the first request either answered or failed
        return _Raced(errors[0], None)
    finally:
        for task in running:
            task.cancel()
        if running:  # wait for the losers to let go of their connections and permits
            await asyncio.gather(*running, return_exceptions=True)


def _slot(quota: ModelQuota | None, estimate: int) -> AbstractAsyncContextManager[Permit | None]:
    """`quota.slot(estimate)`, or no permit at all for a model without a quota."""
    return quota.slot(estimate) if quota is not None else nullcontext()


def _status(error: openai.APIError) -> int | None:
    return error.status_code if isinstance(error, openai.APIStatusError) else None


def _request_body(
    call: ModelCall, system: str | None, user: str, image_urls: list[str]
) -> dict[str, Any]:
    """The JSON request body of the call, model excepted (it differs per target)."""
    if call.kind == "embedding":
        return (
            {"input": user}
            if call.dimensions is None
            else {"input": user, "dimensions": call.dimensions}
        )
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    if call.kind == "vision":
        parts: list[dict[str, Any]] = [{"type": "text", "text": user}]
        parts += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
        messages.append({"role": "user", "content": parts})
    else:
        messages.append({"role": "user", "content": user})
    body: dict[str, Any] = {"messages": messages}
    if call.temperature is not None:
        body["temperature"] = call.temperature
    if call.max_tokens is not None:
        body["max_tokens"] = call.max_tokens
    if call.output_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": call.name, "schema": call.output_schema, "strict": True},
        }
    return body


def _estimate_tokens(call: ModelCall, request: dict[str, Any]) -> int:
    """Prompt tokens plus the completion budget: what a TPM limit charges up front."""
    if call.kind == "embedding":
        return count_text_tokens(str(request["input"]))
    prompt = count_prompt_tokens(request["messages"])
    return prompt + (call.max_tokens or _DEFAULT_COMPLETION_ESTIMATE)
