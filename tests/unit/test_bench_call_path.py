"""The two sides of `dev.bench.call_path` give the same results, so its ratio is fair, and
the lean call path answers exactly as the SDK's typed one did."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from dev.bench.call_path import KINDS, SdkModelClient, make_call, user_text
from llmflow.services.models.client import ModelClient
from llmflow.services.models.retry import RetryPolicy
from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app

# Fields that differ between any two runs.
_TIMING = {"latency_ms"}


@pytest.mark.parametrize("kind", KINDS)
async def test_sdk_and_lean_sides_answer_alike(kind: str) -> None:
    server = TestServer(make_app(SimulatorConfig()))
    await server.start_server()
    sdk = AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k", max_retries=0)
    call = make_call(kind)
    results: list[dict[str, Any]] = []
    try:
        for cls in (SdkModelClient, ModelClient):
            client = cls({"default": sdk}, policy=RetryPolicy(max_attempts=1))
            result = await client.run(
                call, call_id="id-1", system="be terse", user=user_text("t", 1), image_urls=[]
            )
            results.append(result.model_dump(exclude=_TIMING))
    finally:
        await sdk.close()
        await server.close()
    old, new = results
    assert new == old and new["answer"] and new["tokens_in"] > 0
