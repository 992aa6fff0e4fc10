"""A gateway in memory: fake producer, results added by hand, an aiohttp test client."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmflow.services.gateway.app import Gateway
from llmflow.services.gateway.auth import Authenticator
from llmflow.services.gateway.results import Entry, entry_of
from llmflow.services.gateway.settings import GatewaySettings
from llmflow.topologies.loader import load_topology

ROOT = Path(__file__).resolve().parents[3]
ACME = "acme-token-0123456789"
GLOBEX = "globex-token-0123456789"
TOKENS = {ACME: {"tenant": "acme", "replay": True}, GLOBEX: {"tenant": "globex"}}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Metadata:
    partition: int
    offset: int


@dataclass
class FakeProducer:
    """Records what is sent; acks at once unless `hold` (then never)."""

    hold: bool = False
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    held: list[asyncio.Future[Any]] = field(default_factory=list)

    async def __call__(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.sent.append((topic, value, key))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.held.append(future)
        else:
            future.set_result(Metadata(hash(key) % 4, len(self.sent) - 1))
        return future

    def release(self) -> None:
        """Ack what was held, and every record from now on at once."""
        self.hold = False
        for n, future in enumerate(self.held):
            if not future.done():
                future.set_result(Metadata(0, n))
        self.held.clear()


def make_gateway(producer: FakeProducer | None = None, **settings: Any) -> Gateway:
    values: dict[str, Any] = {"tokens": TOKENS} | settings
    config = GatewaySettings(**values)
    topologies = [load_topology(ROOT / "topologies" / "support_triage.yaml")]
    gateway = Gateway(config, topologies, Authenticator(config.credentials()))
    gateway.publisher.send = producer if producer is not None else FakeProducer()
    return gateway


def event(n: int = 0, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"ev-{n}",
        "kind": "text",
        "key": "C-1001",
        "source": "test",
        "timestamp": datetime(2026, 11, 30, tzinfo=UTC).isoformat(),
        "text": "I was charged twice",
    } | fields


def output(
    event_id: str,
    *,
    tenant: str | None = "acme",
    key: str = "C-1001",
    offset: int = 0,
    partition: int = 0,
    topic: str = "support.triaged",
    **fields: Any,
) -> Entry:
    """An output record of support_triage in the index; `fields` add to or replace its own."""
    value = {
        "record_type": "output",
        "event_id": event_id,
        "event_key": key,
        "tenant": tenant,
        "topology": "support_triage",
    } | fields
    entry = entry_of(
        topic, partition, offset, key.encode(), json.dumps(value).encode(), "support_triage"
    )
    assert entry is not None
    return entry
