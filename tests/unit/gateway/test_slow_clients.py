"""Clients that hold connections without finishing: slow headers, endless bodies, idle
keep-alive, readers that take no bytes (of streams, of pipelined answers). Each is cut off
after its timeout, over a real socket to a real aiohttp server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from llmflow.services.gateway.app import Gateway, make_app, runner_options
from llmflow.services.gateway.console import Console
from llmflow.services.gateway.results import entry_of
from llmflow.services.gateway.stalls import listening_socket, watch_stalls
from tests.unit.gateway.helpers import ACME, make_gateway

TIMEOUT = 0.5


@pytest.fixture
async def gateway() -> Gateway:
    return make_gateway(
        idle_timeout_s=TIMEOUT, body_timeout_s=TIMEOUT, write_timeout_s=TIMEOUT, heartbeat_s=5
    )


@pytest.fixture
async def server(gateway: Gateway) -> AsyncIterator[TestServer]:
    """The gateway's app, runner options, listening socket and stall watch."""
    server = TestServer(
        make_app(gateway), socket_factory=lambda host, port, family: listening_socket(host, port)
    )
    await server.start_server(**runner_options(gateway.settings))
    assert server.runner is not None and server.runner.server is not None
    watch = asyncio.create_task(watch_stalls(server.runner.server, TIMEOUT, every_s=0.1))
    yield server
    watch.cancel()
    await server.close()


def _connect(server: TestServer, receive_buffer: int = 4096) -> socket.socket:
    """A client socket; its small receive buffer fills fast when it is not read."""
    assert server.port is not None
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    return sock


def _connections(server: TestServer) -> int:
    assert server.runner is not None and server.runner.server is not None
    return len(server.runner.server.connections)


async def _until(check: Callable[[], bool], within: float) -> float:
    """Seconds until `check()` holds; fails after `within`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, "not within the time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def test_headers_sent_a_byte_at_a_time_are_cut_off(server: TestServer) -> None:
    sock = _connect(server)

    def trickle() -> float:
        start = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)  # 10 s in all, were it let through
        except OSError:
            return time.monotonic() - start
        return float("inf")

    try:
        cut_after = await _in_thread(trickle)
    finally:
        sock.close()
    assert TIMEOUT <= cut_after < TIMEOUT + 2


async def test_an_idle_connection_is_closed_after_its_answer(server: TestServer) -> None:
    sock = _connect(server)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)

        def read_to_end() -> tuple[bytes, float]:
            data, start = b"", time.monotonic()
            while chunk := sock.recv(4096):
                data += chunk
            return data, time.monotonic() - start

        data, took = await _in_thread(read_to_end)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok\n")  # answered, then closed
    assert took < TIMEOUT + 2
    await _until(lambda: _connections(server) == 0, within=2)


async def test_a_chunked_body_that_never_ends_is_408(server: TestServer) -> None:
    sock = _connect(server)
    head = (
        "POST /v1/topics/support.tickets/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ACME}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )

    def dribble() -> bytes:
        sock.sendall(head.encode() + b"1\r\n[\r\n")
        sock.settimeout(0.05)
        for _ in range(200):  # 10 s of one space a chunk, were it let through
            try:
                sock.sendall(b"1\r\n \r\n")
                if answer := sock.recv(4096):
                    return answer
            except TimeoutError:
                continue
            except OSError:
                return b""
        return b""

    try:
        answer = await _in_thread(dribble)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert b'"body_timeout"' in answer


def _big_output(offset: int) -> Any:
    value = {
        "record_type": "output",
        "event_id": f"e{offset}",
        "event_key": "K",
        "tenant": "acme",
        "topology": "support_triage",
        "answer": "x" * 256 * 1024,
    }
    raw = json.dumps(value).encode()
    return entry_of("support.triaged", 0, offset, b"K", raw, "support_triage")


async def test_a_result_stream_client_that_takes_no_bytes_is_disconnected(
    server: TestServer, gateway: Gateway
) -> None:
    gateway.index.start(("support.triaged", 0), 0)
    sock = _connect(server)
    try:
        sock.sendall(
            b"GET /v1/topics/support.tickets/results HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {ACME}\r\n\r\n".encode()
        )
        await _until(lambda: gateway.index.subscribers == 1, within=2)
        for offset in range(40):  # 10 MiB, far more than the sockets' buffers
            gateway.index.add(_big_output(offset))
        # Never read: closed once a write waited the write timeout.
        took = await _until(lambda: _connections(server) == 0, within=TIMEOUT + 3)
        assert gateway.index.subscribers == 0
    finally:
        sock.close()
    assert took >= TIMEOUT


async def test_a_console_client_that_takes_no_bytes_is_disconnected(
    server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = {"filler": "x" * 4 * 1024 * 1024}
    monkeypatch.setattr(Console, "snapshot", lambda self, grant: big)
    sock = _connect(server)
    try:
        sock.sendall(
            b"GET /v1/console/stream HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {ACME}\r\n\r\n".encode()
        )
        await _until(lambda: _connections(server) == 1, within=2)
        await _until(lambda: _connections(server) == 0, within=TIMEOUT + 3)
    finally:
        sock.close()


async def test_pipelined_answers_never_read_are_disconnected(server: TestServer) -> None:
    sock = _connect(server)
    try:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 300)  # no token needed
        await _until(lambda: _connections(server) == 1, within=2)
        # aiohttp's last drain of an answer waits for the client with no limit: the watch
        # resets the connection once bytes waited the write timeout.
        took = await _until(lambda: _connections(server) == 0, within=TIMEOUT + 3)
    finally:
        sock.close()
    assert took >= TIMEOUT


async def test_a_slow_reader_that_takes_everything_is_not_disconnected(
    server: TestServer,
) -> None:
    sock = _connect(server, receive_buffer=64 * 1024)
    sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 40)
    sock.settimeout(0.5)

    def read_slowly() -> int:
        got, answers, started = b"", 0, time.monotonic()
        while answers < 40 and time.monotonic() - started < 30:
            try:
                got += sock.recv(16 * 1024)
            except TimeoutError:
                continue
            answers = got.count(b"HTTP/1.1 200")
            time.sleep(0.01)  # about 1.5 MB/s: slower than the gateway writes
        return answers

    try:
        answers = await _in_thread(read_slowly)
    finally:
        sock.close()
    assert answers == 40
