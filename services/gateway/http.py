"""What every route shares: the request's grant, and the shape of an error answer."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from llmflow.services.gateway.auth import Grant
from llmflow.services.gateway.stalls import reset

GRANT = web.RequestKey("grant", Grant)
"""The authenticated request's grant, set by the gateway's auth middleware."""


def error(status: int, error: str, message: str, **more: Any) -> web.Response:
    """`{"error": <name>, "message": <why>, ...}` with `status`."""
    headers = more.pop("headers", None)
    return web.json_response(
        {"error": error, "message": message, **more}, status=status, headers=headers
    )


def drop(request: web.Request) -> None:
    """Close the request's connection now. A stream client that takes no bytes would keep it
    open forever otherwise: aiohttp drains the response's last bytes with no time limit."""
    if request.transport is not None:
        reset(request.transport)


async def open_event_stream(request: web.Request) -> web.StreamResponse:
    """A `text/event-stream` answer, its head sent; proxies told not to buffer it."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    return response


def too_many_streams(full: Exception, retry_after_s: int) -> web.Response:
    return error(429, "too_many_streams", str(full), headers={"Retry-After": str(retry_after_s)})
