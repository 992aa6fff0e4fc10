"""The worker's HTTP port (`LLMFLOW_METRICS_PORT`): `/metrics`, `/healthz` and `/readyz`.

Served from the worker's own event loop (aiohttp), so an answer from `/healthz` means the
loop that runs the agents is turning; a loop that is stuck does not answer, and a liveness
probe restarts the process. `/readyz` answers 200 once the worker has joined its consumer
group (its partitions are assigned, none may be its share when workers outnumber
partitions), its org-data copy is caught up and being followed, and no topology is paused
for a model endpoint that is down; else 503 with the reasons, one per line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """What `/readyz` asks; each check returns a reason it is not ready, or None."""

    checks: list[Callable[[], str | None]] = field(default_factory=list)

    def reasons(self) -> list[str]:
        found = []
        for check in self.checks:
            try:
                reason = check()
            except Exception as exc:  # a check that fails says so; the server goes on
                reason = f"readiness check failed: {type(exc).__name__}: {exc}"
            if reason:
                found.append(reason)
        return found


class GroupMembership:
    """Whether the worker holds its place in the consumer group: set when partitions are
    assigned (even none), cleared while they are revoked."""

    def __init__(self) -> None:
        self.assigned = False

    def check(self) -> str | None:
        return None if self.assigned else "partitions not assigned yet (joining the group)"


def health_app(registry: CollectorRegistry, readiness: Readiness) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        reasons = readiness.reasons()
        if reasons:
            return web.Response(status=503, text="".join(f"{r}\n" for r in reasons))
        return web.Response(text="ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving `app`; the caller cleans the returned runner up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("serving /metrics, /healthz and /readyz on %s:%d", host, port)
    return runner
