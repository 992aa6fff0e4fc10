"""The worker's HTTP port: `/metrics` as Prometheus reads it, `/healthz` while the event
loop answers, `/readyz` with one line per reason the worker is not ready."""

from __future__ import annotations

from aiohttp import ClientSession
from aiohttp.test_utils import BaseTestServer, TestServer

from llmflow.services.worker.health import GroupMembership, Readiness, health_app
from llmflow.services.worker.metrics import Metrics


async def _get(server: BaseTestServer, path: str) -> tuple[int, str]:
    async with ClientSession() as session, session.get(server.make_url(path)) as response:
        return response.status, await response.text()


async def test_readyz_names_every_reason_until_all_hold() -> None:
    metrics = Metrics()
    metrics.outputs.labels("support_triage").inc(3)
    membership = GroupMembership()
    org_ready = False
    paused: list[str] = ["support_triage"]

    def org() -> str | None:
        return None if org_ready else "org data not caught up with its topics yet"

    def gates() -> str | None:
        return f"paused: {', '.join(paused)}" if paused else None

    def broken() -> str | None:
        raise RuntimeError("no such table")

    readiness = Readiness([membership.check, org, gates])
    async with TestServer(health_app(metrics.registry, readiness)) as server:
        assert await _get(server, "/healthz") == (200, "ok\n")
        status, text = await _get(server, "/readyz")
        assert status == 503
        assert text.splitlines() == [
            "partitions not assigned yet (joining the group)",
            "org data not caught up with its topics yet",
            "paused: support_triage",
        ]
        membership.assigned, org_ready = True, True
        paused.clear()
        assert await _get(server, "/readyz") == (200, "ready\n")
        membership.assigned = False  # a rebalance revokes the partitions
        assert (await _get(server, "/readyz"))[0] == 503
        membership.assigned = True
        readiness.checks.append(broken)
        status, text = await _get(server, "/readyz")
        assert (status, text) == (503, "readiness check failed: RuntimeError: no such table\n")
        status, text = await _get(server, "/metrics")
        assert status == 200
        assert 'llmflow_outputs_total{topology="support_triage"} 3.0' in text
