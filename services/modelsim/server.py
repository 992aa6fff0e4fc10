"""HTTP front of the model SIMULATOR: OpenAI-compatible /v1 routes plus /sim introspection.

Every response carries `x-llmflow-simulator: 1` and an `x-request-id`. Model calls
(chat completions, embeddings) get latency and injected faults; listings do not.
Chat calls asking for a `json_schema` answer may get one that breaks it (`rate_invalid`);
the request log marks those `"invalid": true`.
"""

import asyncio
import contextlib
import functools
import json
import logging
import math
import signal
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from llmflow.services.modelsim.answers import BadRequest, chat_completion, embeddings
from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.faults import Fault, FaultInjector

logger = logging.getLogger(__name__)

OWNER = "llmflow-simulator"
CALL_ID_HEADER = "x-llmflow-call-id"
MAX_LOG_ENTRIES = 100_000
MAX_BODY_BYTES = 32 * 1024 * 1024
# Bodies this large carry images; decoding them in a thread keeps the event loop responsive.
OFFLOAD_BYTES = 256 * 1024
RATE_WINDOW_S = 60.0

Answer = Callable[[Mapping[str, Any]], dict[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An OpenAI-style error answer."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def _common(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = f"{exc.reason}: {request.method} {request.path}"
        response = _error(exc.status, message, "invalid_request_error")
    except Exception:
        logger.exception("simulator failed on %s %s", request.method, request.path)
        response = _error(500, "the simulator failed unexpectedly", "server_error")
    response.headers["x-llmflow-simulator"] = "1"
    response.headers["x-request-id"] = str(uuid.uuid4())
    return response


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class _Simulator:
    """Routes and state of one app: fault generator, request log, rate-limit window."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.faults = FaultInjector(config)
        self.log: deque[dict[str, Any]] = deque(maxlen=MAX_LOG_ENTRIES)
        self.by_status: Counter[str] = Counter()
        self.by_path: Counter[str] = Counter()
        self.window: deque[float] = deque()

    def _authorised(self, request: web.Request) -> bool:
        key = self.config.require_api_key
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    def _record(
        self,
        request: web.Request,
        model: str | None,
        status: int,
        usage: Mapping[str, Any] | None,
        *,
        invalid: bool = False,
        received: float | None = None,
    ) -> None:
        now = time.time()
        self.log.append(
            {
                "t": now,
                "received": received or now,
                "path": request.path,
                "model": model,
                "status": status,
                "ok": status == 200,
                "invalid": invalid,
                "call_id": request.headers.get(CALL_ID_HEADER),
                "prompt_tokens": usage.get("prompt_tokens") if usage else None,
                "completion_tokens": usage.get("completion_tokens", 0) if usage else None,
            }
        )
        self.by_status[str(status)] += 1
        self.by_path[request.path] += 1

    def _ratelimit_headers(self) -> dict[str, str]:
        limit = self.config.rpm_limit
        if limit is None:
            return {}
        now = time.monotonic()
        self.window.append(now)
        while self.window[0] <= now - RATE_WINDOW_S:
            self.window.popleft()
        return {
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(max(0, limit - len(self.window))),
        }

    async def chat(self, request: web.Request) -> web.Response:
        broken = functools.partial(chat_completion, break_schema=True)
        return await self._model_call(request, chat_completion, broken)

    async def embed(self, request: web.Request) -> web.Response:
        return await self._model_call(request, embeddings)

    async def _model_call(
        self, request: web.Request, answer: Answer, broken: Answer | None = None
    ) -> web.Response:
        """Answer with `broken` instead of `answer` when the invalid-answer draw hits."""
        received = time.time()  # what a provider's requests-per-minute limit counts
        raw = await request.read()
        body = _parse_json(raw)
        model = body.get("model") if isinstance(body, dict) else None
        response, usage, invalid = await self._answer(request, raw, body, answer, broken)
        model = model if isinstance(model, str) else None
        self._record(request, model, response.status, usage, invalid=invalid, received=received)
        return response

    async def _answer(
        self, request: web.Request, raw: bytes, body: Any, answer: Answer, broken: Answer | None
    ) -> tuple[web.Response, Mapping[str, Any] | None, bool]:
        """(response, usage, whether a schema-breaking answer was served)."""
        if not self._authorised(request):
            return _unauthorised(), None, False
        # Draw before sleeping so the fault sequence follows arrival order.
        fault = self.faults.next_fault()
        # Drawn even when a fault follows, so the sequence depends on arrival order only.
        invalid = broken is not None and _asks_for_schema(body) and self.faults.next_invalid()
        delay_s = self.faults.latency_s()
        if delay_s:
            await asyncio.sleep(delay_s)
        if fault is Fault.RATE_LIMIT:
            return self._rate_limited(), None, False
        if fault is Fault.SERVER_ERROR:
            message = "The server had an error while processing your request (simulated)."
            return _error(500, message, "server_error"), None, False
        if fault is Fault.SLOW:
            await asyncio.sleep(self.config.slow_ms / 1000)
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request: expected a JSON object."
            return _error(400, message, "invalid_request_error"), None, False
        if invalid and broken is not None:
            answer = broken
        try:
            if len(raw) < OFFLOAD_BYTES:
                result = answer(body)
            else:
                result = await asyncio.to_thread(answer, body)
        except BadRequest as exc:
            error = _error(400, exc.message, "invalid_request_error", param=exc.param)
            return error, None, False
        response = web.json_response(result, headers=self._ratelimit_headers())
        return response, result["usage"], invalid

    def _rate_limited(self) -> web.Response:
        retry_s = self.config.retry_after_s
        headers = {
            "Retry-After": str(math.ceil(retry_s)),
            "retry-after-ms": str(round(retry_s * 1000)),
        }
        message = f"Rate limit reached (simulated). Please try again in {retry_s:g}s."
        return _error(429, message, "rate_limit_error", code="rate_limit_exceeded", headers=headers)

    def _model_entry(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": OWNER}

    async def list_models(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            response = _unauthorised()
        else:
            data = [self._model_entry(model) for model in self.config.models]
            response = web.json_response({"object": "list", "data": data})
        self._record(request, None, response.status, None)
        return response

    async def get_model(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        if not self._authorised(request):
            response = _unauthorised()
        elif model in self.config.models:
            response = web.json_response(self._model_entry(model))
        else:
            message = f"The model '{model}' does not exist (simulator)."
            response = _error(404, message, "invalid_request_error", code="model_not_found")
        self._record(request, model, response.status, None)
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "simulator": True})

    async def requests(self, request: web.Request) -> web.Response:
        """The request log, optionally only the entries of `?call_id=`."""
        call_id = request.query.get("call_id")
        entries = [e for e in self.log if call_id is None or e["call_id"] == call_id]
        return web.json_response(entries)

    async def clear_requests(self, request: web.Request) -> web.Response:
        """Forget the request log and the stats, e.g. between benchmark runs."""
        cleared = len(self.log)
        self.log.clear()
        self.by_status.clear()
        self.by_path.clear()
        return web.json_response({"cleared": cleared})

    async def stats(self, request: web.Request) -> web.Response:
        body = {
            "total": sum(self.by_status.values()),
            "by_status": dict(self.by_status),
            "by_path": dict(self.by_path),
        }
        return web.json_response(body)


def _asks_for_schema(body: Any) -> bool:
    """Whether a chat body asks for a `json_schema` answer, the only kind `rate_invalid` hits."""
    response_format = body.get("response_format") if isinstance(body, dict) else None
    return isinstance(response_format, dict) and response_format.get("type") == "json_schema"


def _unauthorised() -> web.Response:
    message = "Incorrect API key provided (simulator)."
    return _error(401, message, "invalid_request_error", code="invalid_api_key")


def make_app(config: SimulatorConfig) -> web.Application:
    """The SIMULATOR's aiohttp application; state (log, fault generator) lives in it."""
    sim = _Simulator(config)
    app = web.Application(middlewares=[_common], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/v1/chat/completions", sim.chat)
    app.router.add_post("/v1/embeddings", sim.embed)
    app.router.add_get("/v1/models", sim.list_models)
    app.router.add_get("/v1/models/{model}", sim.get_model)
    app.router.add_get("/healthz", sim.healthz)
    app.router.add_get("/sim/requests", sim.requests)
    app.router.add_delete("/sim/requests", sim.clear_requests)
    app.router.add_get("/sim/stats", sim.stats)
    return app


async def serve(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve the SIMULATOR on host:port (0 picks a free port) until cancelled."""
    # No access log: one line per request costs CPU the benchmarks need.
    runner = web.AppRunner(
        make_app(config),
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=2.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound_port = runner.addresses[0][1] if runner.addresses else port
        shown_host = f"[{host}]" if ":" in host else host
        logger.info("llmflow model SIMULATOR listening on http://%s:%s/v1", shown_host, bound_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _serve_until_signal(config: SimulatorConfig, host: str, port: int) -> None:
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(config, host, port)


def run(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve the SIMULATOR until SIGINT or SIGTERM (blocking)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signal(config, host, port))
