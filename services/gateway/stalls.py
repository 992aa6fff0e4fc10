"""Connections whose client takes no bytes are closed after `write_timeout_s`.

aiohttp waits for a slow reader with no time limit: the last drain of a response has none,
and its keep-alive timer does not run while a request is answered. So a client that stops
reading (after pipelined requests, or on a stream) would hold its connection, and the bytes
queued for it, forever. Every `every_s` the watch looks at each connection's unsent bytes:
one whose bytes waiting never went down for `timeout_s` is reset. A slow reader's go down
between looks, as it takes them; a writer waits for the client when they pass 64 KiB, so
a client that reads nothing leaves them where they are."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

from aiohttp import web

log = logging.getLogger(__name__)

SEND_BUFFER_BYTES = 64 * 1024
"""Each connection's kernel send buffer (Linux doubles it), set on the listening socket so
every accepted one inherits it: without it the kernel would take megabytes for a client
that reads nothing before our own buffer, which the watch sees, fills."""


def reset(transport: asyncio.BaseTransport) -> None:
    """Close at once with a reset: the bytes the kernel holds for the client are freed now,
    not after minutes of retransmitting to a peer that does not read."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.WriteTransport):
        transport.abort()
    else:
        transport.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, its accepted connections' send buffer bounded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    return sock


async def watch_stalls(server: web.Server, timeout_s: float, every_s: float = 1.0) -> None:
    """Reset every connection of `server` whose unsent bytes neither ran out nor went down
    from one look to the next for `timeout_s`; runs until cancelled."""
    loop = asyncio.get_running_loop()
    stalled: dict[asyncio.BaseTransport, tuple[float, int]] = {}  # since, bytes waiting
    while True:
        await asyncio.sleep(every_s)
        now = loop.time()
        open_now = set()
        for handler in server.connections:
            transport = handler.transport
            if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
                continue
            open_now.add(transport)
            waiting = transport.get_write_buffer_size()
            since, before = stalled.get(transport, (now, 0))
            if waiting == 0 or waiting < before:  # the client took bytes
                since = now
            stalled[transport] = (since, waiting)
            if waiting and now - since >= timeout_s:
                log.warning("gateway: a client took no bytes for %g s; disconnected", timeout_s)
                reset(transport)
        for gone in stalled.keys() - open_now:
            del stalled[gone]
