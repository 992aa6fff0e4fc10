"""`llmflow gateway` against a real broker, a worker and the model simulator: publish over
HTTP, long-poll the result, stream a key's results and resume after a disconnect, reach a
dead letter, and see nothing of another tenant's."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ACME = "acme-secret-token-0001"
GLOBEX = "globex-secret-token-0002"
TOKENS = {ACME: {"tenant": "acme"}, GLOBEX: {"tenant": "globex"}}
README = Path(__file__).resolve().parents[2] / "README.md"


def _event(event_id: str, key: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "kind": "text",
        "key": key,
        "source": "test",
        "timestamp": datetime.now(UTC).isoformat(),
        "text": f"Ticket {event_id}: my invoice was charged twice",
    } | fields


def _call(
    url: str, token: str, body: Any = None, timeout: float = 60.0
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


class Sse:
    """A stream's events, read line by line."""

    def __init__(self, url: str, token: str, last_id: str | None = None) -> None:
        request = urllib.request.Request(url)
        request.add_header("Authorization", f"Bearer {token}")
        if last_id:
            request.add_header("Last-Event-ID", last_id)
        self.response = urllib.request.urlopen(request, timeout=90)

    def next(self, timeout_s: float = 90.0) -> dict[str, str]:
        current: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # heartbeats come every second
            line = self.response.readline().decode().rstrip("\n")
            if not line and current:
                return current
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                current[name] = value
        raise AssertionError(f"no result within {timeout_s:g} s")

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def gateway(gateways: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return gateways(TOKENS, heartbeat_s="1")


def test_publish_wait_stream_resume_dead_letter_and_tenants(gateway: dict[str, Any]) -> None:
    base, triage = gateway["base"], gateway["triage"]
    tickets = f"{base}/v1/topics/{triage['input_topic']}/events"
    key = f"C-{uuid.uuid4().hex[:6]}"

    # A stream of this key's results from now on, opened before anything is published.
    stream = Sse(f"{base}/v1/topics/{triage['input_topic']}/results?key={key}", ACME)
    others = Sse(f"{base}/v1/topics/{triage['input_topic']}/results?key={key}", GLOBEX)

    status, body, _ = _call(tickets, ACME, [_event("gw-1", key), _event("gw-2", key)])
    assert status == 202, body
    assert [e["id"] for e in body["events"]] == ["gw-1", "gw-2"]
    assert all(e["offset"] >= 0 and e["partition"] >= 0 for e in body["events"])

    status, result, _ = _call(f"{base}/v1/results/gw-1?wait=60", ACME, timeout=90)
    assert status == 200 and result["record_type"] == "output", result
    assert result["event_id"] == "gw-1" and result["tenant"] == "acme"
    assert result["event_key"] == key

    # Another tenant sees nothing of acme's: not by id, not in its stream.
    status, missing, _ = _call(f"{base}/v1/results/gw-1?wait=1", GLOBEX)
    assert status == 404 and missing["error"] == "no_result"

    first = stream.next()
    assert first["event"] == "output" and json.loads(first["data"])["event_key"] == key
    with pytest.raises(AssertionError, match="no result"):
        others.next(timeout_s=3)  # acme's results, answered by now, are not globex's
    others.close()
    stream.close()  # disconnect after one result

    status, body, _ = _call(tickets, ACME, _event("gw-3", key))
    assert status == 202
    resumed = Sse(f"{base}/v1/topics/{triage['input_topic']}/results?key={key}", ACME, first["id"])
    seen = {json.loads(first["data"])["event_id"]}
    rest: list[str] = []
    while len(seen | set(rest)) < 3:
        rest.append(json.loads(resumed.next()["data"])["event_id"])
    resumed.close()
    assert len(rest) == len(set(rest)) == 2 and seen.isdisjoint(rest)
    assert seen | set(rest) == {"gw-1", "gw-2", "gw-3"}

    # A dead letter is reached by the long poll: an image outside the worker's image root.
    images = gateway["images"]
    image_event = _event("gw-dead", "P-2001", kind="image", image={"url": "file:///etc/hosts"})
    image_event.pop("text")
    status, body, _ = _call(f"{base}/v1/topics/{images['input_topic']}/events", ACME, image_event)
    assert status == 202, body
    status, dead, _ = _call(f"{base}/v1/results/gw-dead?wait=60", ACME, timeout=90)
    assert status == 200 and dead["record_type"] == "dead_letter", dead
    assert dead["stage"] == "image"
    status, _, _ = _call(f"{base}/v1/results/gw-dead?wait=1", GLOBEX)
    assert status == 404

    # An id past the partitions' ends (a recreated topic) is refused, not streamed from.
    past = f"{base}/v1/topics/{triage['input_topic']}/results?last_event_id=o0:999999999"
    status, body, _ = _call(past, ACME)
    assert status == 400 and body["error"] == "id_past_the_end", body

    # globex may not publish as acme.
    status, body, _ = _call(tickets, GLOBEX, _event("gw-4", key, tenant="acme"))
    assert status == 403 and body["errors"][0]["field"] == "tenant"


def test_a_stream_resumes_from_the_topics_when_the_index_forgot(
    gateways: Callable[..., dict[str, Any]],
) -> None:
    """With an index of 2 results, a stream resumed 6 results back reads them from Kafka."""
    gateway = gateways(TOKENS, heartbeat_s="1", index_results="2")
    base, triage = gateway["base"], gateway["triage"]
    key = f"C-{uuid.uuid4().hex[:6]}"
    url = f"{base}/v1/topics/{triage['input_topic']}/results?key={key}"
    stream = Sse(url, ACME)
    status, _, _ = _call(
        f"{base}/v1/topics/{triage['input_topic']}/events", ACME, _event("old-0", key)
    )
    assert status == 202
    first = stream.next()
    stream.close()
    ids = [f"old-{n}" for n in range(1, 7)]
    watcher = Sse(url, ACME)  # sees them answered, so the index has moved past them
    status, _, _ = _call(
        f"{base}/v1/topics/{triage['input_topic']}/events", ACME, [_event(i, key) for i in ids]
    )
    assert status == 202
    assert sorted(json.loads(watcher.next()["data"])["event_id"] for _ in ids) == ids
    watcher.close()
    resumed = Sse(url, ACME, first["id"])
    got = [json.loads(resumed.next()["data"])["event_id"] for _ in ids]
    resumed.close()
    assert sorted(got) == ids
    # Unique and after `first`: the position told the topics' reader where to start.
    assert json.loads(first["data"])["event_id"] == "old-0"


def _readme_commands() -> list[str]:
    """The `curl` commands of the README's gateway section, continuation lines joined."""
    text = README.read_text()
    section = text.split("## HTTP gateway", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    joined = re.sub(r"\\\n\s*", "", block)
    return [line for line in joined.splitlines() if line.startswith("curl ")]


def test_the_readmes_curl_commands_work_as_written(gateway: dict[str, Any]) -> None:
    publish, wait, stream = _readme_commands()
    topic = gateway["triage"]["input_topic"]
    event_id = f"ticket-{uuid.uuid4().hex[:8]}"

    def adapt(command: str) -> str:  # this test's topics, a fresh id
        return command.replace("support.tickets", topic).replace("ticket-1", event_id)

    env = {"GATEWAY": gateway["base"], "TOKEN": ACME, "PATH": "/usr/bin:/bin"}
    streaming = subprocess.Popen(
        ["bash", "-c", adapt(stream)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(1)
        done = subprocess.run(
            ["bash", "-c", adapt(publish)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and json.loads(done.stdout)["events"][0]["id"] == event_id
        done = subprocess.run(
            ["bash", "-c", adapt(wait)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and json.loads(done.stdout)["event_id"] == event_id
        assert streaming.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = streaming.stdout.readline()
            if line.startswith("data: ") and json.loads(line[6:])["event_id"] == event_id:
                break
        else:
            raise AssertionError("the stream gave no result")
    finally:
        streaming.kill()
        streaming.wait()
