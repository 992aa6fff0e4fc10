"""Endpoint probing over the worker's aiohttp transport, against real local servers: the
simulator, small aiohttp apps answering one status, a silent listener and a closed port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from llmflow.services.models.client import ModelCallError, ModelClient, make_openai_client
from llmflow.services.models.probe import ProbeResult, connection_failure, probe
from llmflow.services.models.retry import RetryPolicy, classify
from llmflow.services.modelsim.config import SimulatorConfig
from llmflow.services.modelsim.server import make_app
from llmflow.topologies.spec import ModelCall

POLICY = RetryPolicy(max_attempts=1, attempt_timeout_s=5)
Client = Callable[..., openai.AsyncOpenAI]  # (base_url, api_key="k")


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """Factory: the worker's kind of SDK client (aiohttp transport) for a base URL."""
    made: list[openai.AsyncOpenAI] = []

    def make(base_url: str, api_key: str = "k") -> openai.AsyncOpenAI:
        made.append(make_openai_client(base_url, api_key, POLICY))
        return made[-1]

    yield make
    for sdk in made:
        await sdk.close()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A loopback port that takes connections and never answers."""

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def answering() -> AsyncIterator[Callable[..., Any]]:
    """Factory: a server whose every route answers `status` with an OpenAI-style error."""
    servers: list[TestServer] = []

    async def start(status: int, message: str = "nope") -> str:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response({"error": {"message": message}}, status=status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/v1"))

    yield start
    for server in servers:
        await server.close()


async def test_an_answering_endpoint_is_ok(client: Client) -> None:
    async with TestServer(make_app(SimulatorConfig(require_api_key="right"))) as server:
        result = await probe(client(str(server.make_url("/v1")), "right"))
    assert result == ProbeResult(True, "ok", auth_failed=False)


async def test_a_rejected_key_is_an_auth_failure(client: Client) -> None:
    async with TestServer(make_app(SimulatorConfig(require_api_key="right"))) as server:
        result = await probe(client(str(server.make_url("/v1")), "wrong"))
    assert not result.ok and result.auth_failed
    assert result.reason == "HTTP 401: Incorrect API key provided (simulator)."
    assert "wrong" not in result.reason


@pytest.mark.parametrize(
    ("status", "ok", "auth_failed"),
    [
        (403, False, True),
        (404, True, False),  # no /models route, but the gateway answers
        (405, True, False),
        (429, True, False),  # alive, rate-limited
        (500, False, False),
        (503, False, False),
    ],
)
async def test_statuses(
    client: Client, answering: Callable[..., Any], status: int, ok: bool, auth_failed: bool
) -> None:
    result = await probe(client(await answering(status, "gateway says no")))
    assert (result.ok, result.auth_failed) == (ok, auth_failed)
    assert result.reason.startswith(f"HTTP {status}: ")
    if not ok:
        assert result.reason == f"HTTP {status}: gateway says no"


async def test_a_long_error_message_is_clipped(
    client: Client, answering: Callable[..., Any]
) -> None:
    result = await probe(client(await answering(500, "x" * 1000)))
    assert len(result.reason) < 200 and result.reason.endswith("...")


async def test_a_closed_port_is_connection_refused(client: Client, closed_port: int) -> None:
    started = asyncio.get_running_loop().time()
    result = await probe(client(f"http://127.0.0.1:{closed_port}/v1"), timeout_s=5)
    assert result == ProbeResult(False, "connection refused", auth_failed=False)
    assert asyncio.get_running_loop().time() - started < 2  # not reported as a timeout


async def test_an_unknown_host_is_a_dns_failure(client: Client) -> None:
    result = await probe(client("http://no-such-host.invalid/v1"), timeout_s=5)
    assert result == ProbeResult(False, "DNS lookup failed for no-such-host.invalid", False)


async def test_a_silent_endpoint_times_out(client: Client, silent_port: int) -> None:
    result = await probe(client(f"http://127.0.0.1:{silent_port}/v1"), timeout_s=0.3)
    assert result == ProbeResult(False, "timed out after 0.3 s", auth_failed=False)


async def _failure(sdk: openai.AsyncOpenAI) -> openai.APIError:
    with pytest.raises(openai.APIError) as info:
        await sdk.with_options(timeout=2).models.list()
    return info.value


async def test_classify_names_the_cause_of_a_connection_error(
    client: Client, closed_port: int, silent_port: int
) -> None:
    refused = await _failure(client(f"http://127.0.0.1:{closed_port}/v1"))
    # The transport reports a refused connection as a timeout; the label says what it was.
    assert isinstance(refused, openai.APITimeoutError)
    assert connection_failure(refused) == "connection_refused"
    assert classify(refused) == "connection_refused"

    unknown = await _failure(client("http://no-such-host.invalid/v1"))
    assert (connection_failure(unknown), classify(unknown)) == ("dns", "dns")

    sdk = client(f"http://127.0.0.1:{silent_port}/v1")
    with pytest.raises(openai.APITimeoutError) as info:
        await sdk.with_options(timeout=0.2).models.list()
    assert (connection_failure(info.value), classify(info.value)) == (None, "timeout")


def test_connection_failure_walks_causes_and_contexts() -> None:
    refused = RuntimeError("wrapped")
    refused.__context__ = ConnectionRefusedError("refused")  # raised while handling it
    assert connection_failure(refused) == "connection_refused"
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    error = ValueError("outer")
    error.__cause__ = gai
    assert connection_failure(error) == "dns"
    assert connection_failure(ValueError("plain")) is None


async def test_a_refused_call_fails_with_kind_connection_refused(
    client: Client, closed_port: int
) -> None:
    models = ModelClient({"default": client(f"http://127.0.0.1:{closed_port}/v1")}, policy=POLICY)
    call = ModelCall.model_validate(
        {"name": "c", "model": "m1", "prompt": {"version": "p1", "user": "u"}}
    )
    with pytest.raises(ModelCallError) as info:
        await models.run(call, call_id="id-1", system=None, user="hi", image_urls=[])
    assert (info.value.kind, info.value.transient) == ("connection_refused", True)
