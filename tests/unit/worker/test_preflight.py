"""Start-up checks without a broker: each problem is one line naming the setting to fix.

`preflight` runs an event loop of its own, so it runs in a thread here while the test's loop
serves the simulators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app
from llmflow.services.worker.preflight import preflight
from llmflow.services.worker.settings import Settings
from llmflow.topologies.spec import Topology


def _topology(*calls: dict[str, Any]) -> Topology:
    return Topology.model_validate(
        {
            "name": "t",
            "version": "1",
            "input_topic": "in",
            "output_topic": "out",
            "dead_letter_topic": "dlq",
            "accepts": ["text"],
            "calls": [
                {"name": f"c{n}", "model": "m", "prompt": {"version": "1", "user": "u"}} | call
                for n, call in enumerate(calls)
            ],
        }
    )


@pytest.fixture
async def sim_url() -> AsyncIterator[str]:
    """A simulator that wants the key `right`."""
    async with TestServer(make_app(SimulatorConfig(require_api_key="right"))) as server:
        yield str(server.make_url("/v1"))


async def _preflight(settings: Settings, *topologies: Topology, timeout_s: float = 5) -> list[str]:
    return await asyncio.to_thread(preflight, settings, topologies, timeout_s=timeout_s)


async def test_every_problem_names_its_setting(
    monkeypatch: pytest.MonkeyPatch, closed_port: int, sim_url: str
) -> None:
    monkeypatch.setenv("BACKUP_KEY", "s3cret-wrong")
    settings = Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{closed_port}",
        openai_base_url=f"http://127.0.0.1:{closed_port}/v1",
        openai_api_key="k0-secret",
        endpoints={
            "backup": {"base_url": sim_url, "api_key_env": "BACKUP_KEY"},
            "open": {"base_url": sim_url},
            "unused": {"base_url": "http://unused.invalid/v1"},
        },
    )
    topology = _topology(
        {"fallbacks": [{"model": "m", "endpoint": "backup"}]},
        {"endpoint": "open"},
        {"endpoint": "missing"},
    )
    problems = await _preflight(settings, topology)
    assert problems == [
        "LLMFLOW_ENDPOINTS: no endpoint 'missing', which call t/c2 names",
        f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{closed_port}: no Kafka broker answered within 5 s "
        "(connection refused)",
        f"OPENAI_BASE_URL=http://127.0.0.1:{closed_port}/v1: connection refused",
        f"BACKUP_KEY: rejected by {sim_url}: HTTP 401: Incorrect API key provided (simulator).",
        f"LLMFLOW_ENDPOINTS[open].api_key_env (unset): rejected by {sim_url}: "
        "HTTP 401: Incorrect API key provided (simulator).",
    ]
    assert not any("secret" in line for line in problems)


async def test_endpoints_that_answer_pass(closed_port: int, sim_url: str) -> None:
    settings = Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{closed_port}",
        openai_base_url=sim_url,
        openai_api_key="right",
    )
    problems = await _preflight(settings, _topology({}, {}))
    assert len(problems) == 1 and problems[0].startswith("KAFKA_BOOTSTRAP_SERVERS=")


async def test_a_port_that_does_not_speak_kafka(sim_url: str) -> None:
    """The simulator's HTTP port takes the connection but is no broker."""
    host_port = sim_url.removeprefix("http://").removesuffix("/v1")
    settings = Settings(
        kafka_bootstrap_servers=host_port, openai_base_url=sim_url, openai_api_key="right"
    )
    problems = await _preflight(settings, _topology({}), timeout_s=2)
    assert len(problems) == 1
    assert problems[0].startswith(f"KAFKA_BOOTSTRAP_SERVERS={host_port}: no Kafka broker answered")
    assert "the port is open" in problems[0]


def test_a_malformed_server_list() -> None:
    settings = Settings(kafka_bootstrap_servers="host:port", openai_base_url="http://x.invalid/v1")
    problems = preflight(settings, [_topology({})], timeout_s=2)
    assert problems[0] == "KAFKA_BOOTSTRAP_SERVERS=host:port: not a comma-separated host:port list"
