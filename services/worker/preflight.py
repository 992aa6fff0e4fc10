"""Start-up checks: does the broker answer, and does every model endpoint the topologies call
answer and take its key? A wrong setting then stops the worker at once with one line naming
the environment variable to fix, instead of surfacing later as retries and dead letters.

The checks run concurrently, each within `timeout_s`, the whole within `DEADLINE_S`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.conn import collect_hosts
from aiokafka.errors import KafkaError
from openai import AsyncOpenAI, DefaultAioHttpClient

from llmflow.services.broker.login import login_problem
from llmflow.services.broker.security import KafkaSecurityError, client_options, kafka_security
from llmflow.services.models.probe import connection_reason, probe
from llmflow.services.worker.settings import Settings
from llmflow.topologies.spec import Topology

TIMEOUT_S = 5.0
"""How long one check may wait for the broker or an endpoint to answer."""
DEADLINE_S = 7.5
"""How long all checks together may take; a check still running then is a problem."""


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """An endpoint to probe, and the settings a problem with it names."""

    base_url: str
    api_key: str
    url_setting: str
    key_setting: str


def preflight(
    settings: Settings, topologies: Sequence[Topology], *, timeout_s: float = TIMEOUT_S
) -> list[str]:
    """One line per problem with the broker or an endpoint `topologies` call; empty: all
    answer. Runs on an event loop of its own, which it closes before returning."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(_check(settings, topologies, timeout_s))


async def _check(settings: Settings, topologies: Sequence[Topology], timeout_s: float) -> list[str]:
    servers = settings.kafka_bootstrap_servers
    checks: dict[str, Coroutine[Any, Any, str | None]] = {
        f"KAFKA_BOOTSTRAP_SERVERS={servers}": _broker_problem(servers, timeout_s)
    }
    endpoints, problems = _endpoints(settings, topologies)
    for endpoint in endpoints:
        checks[f"{endpoint.url_setting}={endpoint.base_url}"] = _endpoint_problem(
            endpoint, timeout_s
        )
    tasks = {subject: asyncio.create_task(check) for subject, check in checks.items()}
    await asyncio.wait(tasks.values(), timeout=DEADLINE_S)
    for subject, task in tasks.items():
        if not task.done():
            task.cancel()
            problems.append(f"{subject}: no answer within {DEADLINE_S:g} s")
        elif (problem := task.result()) is not None:
            problems.append(problem)
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    return problems


def _endpoints(
    settings: Settings, topologies: Sequence[Topology]
) -> tuple[list[_Endpoint], list[str]]:
    """The endpoints the topologies' calls name, each once, and problems with names that no
    setting defines."""
    connections = settings.models_config().connections
    endpoints: list[_Endpoint] = []
    problems: list[str] = []
    seen: set[str] = set()
    for topology in topologies:
        for call in topology.calls:
            for name in (target.endpoint for target in call.targets):
                if name in seen:
                    continue
                seen.add(name)
                connection = connections.get(name)
                if connection is None:
                    problems.append(
                        f"LLMFLOW_ENDPOINTS: no endpoint {name!r}, which call "
                        f"{topology.name}/{call.name} names"
                    )
                    continue
                if name == "default":
                    url_setting, key_setting = "OPENAI_BASE_URL", "OPENAI_API_KEY"
                else:
                    url_setting = f"LLMFLOW_ENDPOINTS[{name}].base_url"
                    key_env = settings.endpoints[name].api_key_env
                    key_setting = key_env or f"LLMFLOW_ENDPOINTS[{name}].api_key_env (unset)"
                api_key = connection.api_key.get_secret_value()
                endpoints.append(_Endpoint(connection.base_url, api_key, url_setting, key_setting))
    return endpoints, problems


async def _endpoint_problem(endpoint: _Endpoint, timeout_s: float) -> str | None:
    # The transport the worker's clients use (`models.client.make_openai_client`), built here
    # so a failing start need not load that module's token tables (a second of start-up).
    client = AsyncOpenAI(
        base_url=endpoint.base_url,
        api_key=endpoint.api_key or "unset",
        max_retries=0,
        http_client=DefaultAioHttpClient(),
    )
    try:
        result = await probe(client, timeout_s=timeout_s)
    finally:
        await client.close()
    if result.ok:
        return None
    reason = result.reason
    if endpoint.api_key:  # an endpoint may echo the key it rejected
        reason = reason.replace(endpoint.api_key, "***")
    if result.auth_failed:
        return f"{endpoint.key_setting}: rejected by {endpoint.base_url}: {reason}"
    return f"{endpoint.url_setting}={endpoint.base_url}: {reason}"


def broker_problem(servers: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """`_broker_problem` for callers without an event loop (the command line)."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(_broker_problem(servers, timeout_s))


async def _broker_problem(servers: str, timeout_s: float) -> str | None:
    """None when a broker of `servers` takes our login and serves cluster metadata within
    `timeout_s`; else one line naming the setting to fix."""
    subject = f"KAFKA_BOOTSTRAP_SERVERS={servers}"
    try:
        hosts = [(host, port) for host, port, _ in collect_hosts(servers, randomize=False)]
    except ValueError:
        return f"{subject}: not a comma-separated host:port list"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # A plain connection first: it tells a refused port from a wrong name or a silent host.
    causes = await asyncio.gather(*(_unreachable(host, port, timeout_s) for host, port in hosts))
    found = zip(hosts, causes, strict=True)
    reachable = [_address(host, port) for (host, port), cause in found if cause is None]
    if reachable:
        try:
            security = kafka_security()
        except KafkaSecurityError as exc:
            return str(exc)
        host, port = next((h, p) for (h, p), c in zip(hosts, causes, strict=True) if c is None)
        if problem := await login_problem(host, port, security, deadline - loop.time()):
            return problem
        cause = await _no_metadata(",".join(reachable), deadline - loop.time())
        if cause is None:
            return None
    elif len(set(causes)) == 1:
        cause = causes[0]
    else:
        pairs = zip(hosts, causes, strict=True)
        cause = "; ".join(f"{_address(host, port)}: {c}" for (host, port), c in pairs)
    return f"{subject}: no Kafka broker answered within {timeout_s:g} s ({cause})"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _unreachable(host: str, port: int, timeout_s: float) -> str | None:
    """Why `host:port` takes no TCP connection, or None when it does."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        return connection_reason(exc, host, timeout_s)
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()
    return None


async def _no_metadata(servers: str, timeout_s: float) -> str | None:
    """Why the open ports of `servers` serve no Kafka metadata, or None when one does."""
    if timeout_s <= 0:
        return "no time left to ask for metadata"
    client = AIOKafkaClient(
        bootstrap_servers=servers,
        **client_options(),
        client_id="llmflow-preflight",
        request_timeout_ms=max(1, int(timeout_s * 1000)),
    )
    try:
        with _quiet("aiokafka"):  # it logs every failed attempt; the caller reports one line
            async with asyncio.timeout(timeout_s):
                await client.bootstrap()
    except TimeoutError:
        return "the port is open, but no Kafka metadata came in time"
    except KafkaError:
        return (
            "the port is open, but does not answer as Kafka (a secured listener? see "
            "KAFKA_SECURITY_PROTOCOL)"
        )
    finally:
        await client.close()
    return None


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Only critical records of `logger_name` while inside."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
