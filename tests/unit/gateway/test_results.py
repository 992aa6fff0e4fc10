"""The index stays within its bounds, wakes waiters, and shows each tenant its own results."""

from __future__ import annotations

import asyncio
import base64
import json

from llmflow.services.gateway.auth import OPEN, Grant
from llmflow.services.gateway.results import ResultIndex, Subscription, entry_of
from tests.unit.gateway.helpers import output

ACME = Grant("acme", replay=False)
GLOBEX = Grant("globex", replay=False)


def test_count_bound_forgets_the_oldest_and_moves_what_is_covered() -> None:
    index = ResultIndex(max_results=3, max_bytes=10**6)
    index.start(("support.triaged", 0), 0)
    for n in range(5):
        index.add(output(f"e{n}", offset=n))
    assert len(index) == 3
    assert index.get("e0", ACME) is None and index.get("e4", ACME) is not None
    assert index.covered[("support.triaged", 0)] == 2
    assert index.head[("support.triaged", 0)] == 5
    assert index.holds_after({("support.triaged", 0): 2}, [("support.triaged", 0)])
    assert not index.holds_after({("support.triaged", 0): 1}, [("support.triaged", 0)])


def test_byte_bound() -> None:
    one = len(output("e0").value)
    index = ResultIndex(max_results=1000, max_bytes=one * 2)
    for n in range(10):
        index.add(output(f"e{n}", offset=n))
    assert len(index) == 2 and index.bytes <= one * 2


def test_memory_stays_flat_over_many_results() -> None:
    index = ResultIndex(max_results=100, max_bytes=10**6)
    for n in range(20_000):
        index.add(output(f"e{n}", offset=n))
    assert len(index) == 100 and len(index._by_id) == 100


def test_other_tenants_results_are_invisible() -> None:
    index = ResultIndex(10, 10**6)
    index.add(output("e1", tenant="globex"))
    assert index.get("e1", ACME) is None
    assert index.get("e1", GLOBEX) is not None
    assert index.get("e1", OPEN) is not None


def test_another_tenants_event_of_the_same_id_does_not_hide_a_result() -> None:
    """Event ids are the producers' choice: globex reusing acme's id changes nothing for acme."""
    index = ResultIndex(10, 10**6)
    index.add(output("shared", offset=0, tenant="acme"))
    index.add(output("shared", offset=1, tenant="globex"))
    acme, globex, newest = (index.get("shared", g) for g in (ACME, GLOBEX, OPEN))
    assert acme is not None and acme.offset == 0 and acme.tenant == "acme"
    assert globex is not None and globex.offset == 1
    assert newest is globex
    index.add(output("shared", offset=2, tenant="acme"))
    assert index.get("shared", OPEN).offset == 2  # type: ignore[union-attr]
    for n in range(10):  # both forgotten once evicted: nothing kept per id
        index.add(output(f"e{n}", offset=3 + n))
    assert index.get("shared", ACME) is None and "shared" not in index._by_id


async def test_a_waiter_is_woken_by_its_result() -> None:
    index = ResultIndex(10, 10**6)
    waiting = asyncio.create_task(index.wait("e1", ACME, 5))
    await asyncio.sleep(0.01)
    index.add(output("e1"))
    entry = await waiting
    assert entry is not None and entry.event_id == "e1"
    assert index._waiters == {}


async def test_a_waiter_is_not_woken_by_another_tenants_result() -> None:
    index = ResultIndex(10, 10**6)
    waiting = asyncio.create_task(index.wait("e1", ACME, 0.1))
    await asyncio.sleep(0.01)
    index.add(output("e1", tenant="globex"))
    assert await waiting is None
    assert index._waiters == {}


def test_a_subscription_gets_held_and_new_results_once_and_is_bounded() -> None:
    index = ResultIndex(100, 10**6)
    index.add(output("e1", key="K"))
    index.add(output("e2", key="other"))
    subscription = Subscription("support_triage", ACME, key="K", size=2)
    held = index.subscribe(subscription)
    assert [e.event_id for e in held] == ["e1"]
    index.add(output("e3", key="K", offset=3))
    index.add(output("e4", key="K", offset=4, tenant="globex"))  # not acme's
    index.add(output("e5", key="K", offset=5))
    assert subscription.queue.qsize() == 2 and not subscription.overflowed
    index.add(output("e6", key="K", offset=6))
    assert subscription.overflowed and index.subscribers == 0


def test_a_dead_letter_belongs_to_its_original_events_tenant() -> None:
    original = json.dumps({"id": "e1", "tenant": "acme", "text": "x"}).encode()
    value: dict[str, str | None] = {
        "record_type": "dead_letter",
        "event_id": "e1",
        "original_b64": base64.b64encode(original).decode(),
    }
    entry = entry_of("dlq", 0, 7, b"C-1", json.dumps(value).encode(), "support_triage")
    assert entry is not None and entry.tenant == "acme" and entry.key == "C-1"
    value["original_b64"] = None
    entry = entry_of("dlq", 0, 7, b"C-1", json.dumps(value).encode(), "support_triage")
    assert entry is not None and entry.tenant is None


def test_records_that_are_no_results_are_not_entries() -> None:
    for value in (None, b"", b"{nope", b"[]", b'{"record_type": "projection"}'):
        assert entry_of("t", 0, 0, None, value, "x") is None


def test_without_replay_a_stream_resumes_no_further_back_than_the_lookback() -> None:
    index = ResultIndex(10, 10**6)
    index.start(("support.triaged", 0), 40)
    index.start(("support.triaged", 1), 0)
    index.start(("support.triaged.dlq", 0), 7)
    index.start(("elsewhere", 0), 90)
    index.start(("support.triaged", 0), 55)  # the reader started again: the first start counts
    topics = ["support.triaged", "support.triaged.dlq"]
    asked = {("support.triaged", 0): 0, ("support.triaged", 1): 3}
    assert index.not_before_lookback(asked, topics) == {
        ("support.triaged", 0): 40,
        ("support.triaged", 1): 3,
        ("support.triaged.dlq", 0): 7,  # not named: from the lookback, not from 0
    }
    assert (
        index.not_before_lookback({("support.triaged", 0): 50}, topics)[("support.triaged", 0)]
        == 50
    )
