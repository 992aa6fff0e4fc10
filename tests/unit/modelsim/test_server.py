"""HTTP behaviour of the simulator: routes, headers, faults, auth and the request log."""

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app

CHAT = {"model": "sim-chat", "messages": [{"role": "user", "content": "hello world"}]}


@asynccontextmanager
async def simulator(**settings: Any) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(make_app(SimulatorConfig(**settings)))) as client:
        yield client


async def test_chat_and_headers() -> None:
    async with simulator(rpm_limit=100) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-llmflow-call-id": "call-1"}
        )
        assert response.status == 200
        assert response.headers["x-llmflow-simulator"] == "1"
        assert response.headers["x-request-id"]
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        body = await response.json()
        assert body["choices"][0]["message"]["content"].startswith("[sim sim-chat] re: hello")

        log = await (await client.get("/sim/requests")).json()
        assert log[0]["received"] <= log[0]["t"]
        assert log == [
            {
                "t": log[0]["t"],
                "received": log[0]["received"],
                "path": "/v1/chat/completions",
                "model": "sim-chat",
                "status": 200,
                "ok": True,
                "invalid": False,
                "call_id": "call-1",
                "prompt_tokens": body["usage"]["prompt_tokens"],
                "completion_tokens": body["usage"]["completion_tokens"],
            }
        ]


async def test_ratelimit_headers_omitted_without_limit() -> None:
    async with simulator() as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert "x-ratelimit-limit-requests" not in response.headers


async def test_every_request_rate_limited() -> None:
    async with simulator(rate_429=1, retry_after_s=2.5) as client:
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/embeddings", {})):
            for _ in range(5):
                response = await client.post(path, json=body)
                assert response.status == 429
                assert response.headers["Retry-After"] == "3"
                assert response.headers["retry-after-ms"] == "2500"
                error = (await response.json())["error"]
                assert error["type"] == "rate_limit_error"


async def test_server_errors_and_stats() -> None:
    async with simulator(rate_500=1) as client:
        response = await client.post("/v1/embeddings", json={"model": "m", "input": "x"})
        assert response.status == 500
        assert (await response.json())["error"]["type"] == "server_error"
        stats = await (await client.get("/sim/stats")).json()
        assert stats == {"total": 1, "by_status": {"500": 1}, "by_path": {"/v1/embeddings": 1}}
        cleared = await (await client.delete("/sim/requests")).json()
        assert cleared == {"cleared": 1}
        assert await (await client.get("/sim/requests")).json() == []


async def test_seeded_faults_replay_over_http() -> None:
    async def statuses() -> list[int]:
        async with simulator(rate_429=0.3, seed=11) as client:
            return [
                (await client.post("/v1/chat/completions", json=CHAT)).status for _ in range(60)
            ]

    first = await statuses()
    assert first == await statuses()
    assert set(first) == {200, 429}


async def test_slow_requests_sleep() -> None:
    async with simulator(rate_slow=1, slow_ms=50, latency_ms=10) as client:
        started = time.monotonic()
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status == 200
        assert time.monotonic() - started >= 0.06


async def test_bad_requests_are_openai_errors() -> None:
    async with simulator() as client:
        response = await client.post("/v1/chat/completions", data=b"{not json")
        assert response.status == 400
        response = await client.post("/v1/chat/completions", json={"model": "m"})
        assert response.status == 400
        error = (await response.json())["error"]
        assert error == {
            "message": error["message"],
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
        response = await client.get("/v1/nothing")
        assert response.status == 404
        assert response.headers["x-llmflow-simulator"] == "1"
        assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_api_key_required() -> None:
    async with simulator(require_api_key="secret") as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.get("/v1/models", headers=wrong)).status == 401
        right = {"Authorization": "Bearer secret"}
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=right)).status == 200
        assert (await client.get("/healthz")).status == 200


async def test_models_listing() -> None:
    async with simulator(models=["a", "b"]) as client:
        listing = await (await client.get("/v1/models")).json()
        assert listing["data"] == [
            {"id": "a", "object": "model", "created": 0, "owned_by": "llmflow-simulator"},
            {"id": "b", "object": "model", "created": 0, "owned_by": "llmflow-simulator"},
        ]
        assert (await client.get("/v1/models/a")).status == 200
        assert (await client.get("/v1/models/zzz")).status == 404
