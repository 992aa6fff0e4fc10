"""A broker that goes away makes the gateway answer 503 after its publish timeout, never
hang, and not ready; it is ready and publishes again once the broker is back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from dev.launch import spawn, wait_http
from dev.topologies import copy_topology
from llmflow.services.broker.local import LocalKafka, free_port
from llmflow.services.broker.topics import ensure_topics
from tests.integration.test_gateway import ACME, TOKENS, _event

pytestmark = pytest.mark.integration


def _post(url: str, body: object) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Authorization", f"Bearer {ACME}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_broker_down_is_503_after_the_timeout(run_dir: Path) -> None:
    broker = LocalKafka(run_dir / "kafka").start()
    try:
        copy = copy_topology("support_triage", run_dir, uuid.uuid4().hex[:8])
        ensure_topics(broker.bootstrap_servers, copy.topology.topics, 2)
        port = free_port()
        gateway = spawn(
            "gateway",
            ["gateway", "--topology", str(copy.path)],
            run_dir / "logs",
            {
                "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                "LLMFLOW_GATEWAY_PORT": str(port),
                "LLMFLOW_GATEWAY_TOKENS": json.dumps(TOKENS),
                "LLMFLOW_GATEWAY_PUBLISH_TIMEOUT_S": "3",
            },
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz", gateway, timeout_s=60)
            url = f"http://127.0.0.1:{port}/v1/topics/{copy.topology.input_topic}/events"
            assert _post(url, _event("up-1", "C-1"))[0] == 202
            broker.stop()
            started = time.monotonic()
            status, body = _post(url, _event("down-1", "C-1"))
            took = time.monotonic() - started
            assert status == 503 and body["error"] == "broker_unavailable", body
            assert took < 10, took
            assert gateway.alive()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                pass
            readyz = f"http://127.0.0.1:{port}/readyz"
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(readyz, timeout=10)
            assert refused.value.code == 503
            assert "the last publish failed" in refused.value.read().decode()
            broker.start()  # the same folder: the same port and topics
            # Ready again with no publish in between: /readyz asks the broker itself.
            wait_http(readyz, gateway, timeout_s=60)
            deadline = time.monotonic() + 60
            while (status := _post(url, _event("back-1", "C-1"))[0]) != 202:
                assert status == 503 and time.monotonic() < deadline, status
                time.sleep(1)
        finally:
            gateway.stop()
    finally:
        broker.stop()
