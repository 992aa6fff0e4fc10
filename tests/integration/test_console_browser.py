"""The console in a real browser (Playwright driving Debian's chromium, headless) against a
gateway, a worker, the model simulator and the broker: events published over HTTP show up in
the outputs list and the flow counters; an image that is not there yet becomes a dead
letter; once the image is in place, the dead letter is replayed from the page (after the
confirmation dialog) and the replayed event gets its output; the replay is in the audit
topic; the tenant's spend against its budget comes from the workers' spend changelog; a
read-only token sees no replay button and gets 403. Saves docs/console.png."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_gateway import _call, _event

CHROMIUM = Path("/usr/bin/chromium")
if importlib.util.find_spec("playwright") is None or not CHROMIUM.exists():
    pytest.skip(
        "the console's browser test needs playwright (pip install playwright==1.65.2) and "
        "Debian's chromium at /usr/bin/chromium (apt-get install chromium); .ci/run installs both",
        allow_module_level=True,
    )

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "console.png"
OPERATOR = "acme-operator-token-0001"
VIEWER = "acme-viewer-token-0002"
TOKENS = {OPERATOR: {"tenant": "acme", "replay": True}, VIEWER: {"tenant": "acme"}}
BUDGETS = {"acme": {"usd": 100, "period": "day"}}
WAIT_MS = 90_000


@pytest.fixture
def console(gateways: Callable[..., dict[str, Any]], kafka_bootstrap: str) -> dict[str, Any]:
    """A worker over copies of both shipped topologies and a gateway whose console follows
    that worker's group, pushing a snapshot every half second."""
    audit_topic = f"llmflow.audit.{uuid.uuid4().hex[:8]}"
    stack = gateways(
        TOKENS,
        {"LLMFLOW_BUDGETS": json.dumps(BUDGETS)},
        audit_topic=audit_topic,
        console_every_s="0.5",
        budgets=json.dumps(BUDGETS),
    )
    return stack | {"audit_topic": audit_topic, "bootstrap": kafka_bootstrap}


def _open(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/console")
    page.fill("#token", token)
    page.click("#login button[type=submit]")
    expect(page.locator("#live")).to_have_text("live", timeout=WAIT_MS)


def _audit_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            batches = await consumer.getmany(timeout_ms=5000)
            return [json.loads(r.value) for records in batches.values() for r in records]
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 80, 40)).save(path, "PNG")


def test_the_console_shows_the_flow_and_replays_a_dead_letter(console: dict[str, Any]) -> None:
    base, triage, images = console["base"], console["triage"], console["images"]
    ids = [f"console-{n}" for n in range(3)]
    status, body, _ = _call(
        f"{base}/v1/topics/{triage['input_topic']}/events",
        OPERATOR,
        [_event(i, f"C-{n}") for n, i in enumerate(ids)],
    )
    assert status == 202, body
    # An image that is not in the worker's image root yet: a dead letter at stage image.
    later = console["image_root"] / "later.png"
    photo = _event("console-photo", "P-2001", kind="image", image={"url": f"file://{later}"})
    photo.pop("text")
    status, body, _ = _call(f"{base}/v1/topics/{images['input_topic']}/events", OPERATOR, photo)
    assert status == 202, body

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            _open(page, base, OPERATOR)

            # The outputs list and the flow counters show the three events.
            for event_id in ids:
                row = page.locator(f'#outputs tr.output[data-event-id="{event_id}"]')
                expect(row).to_be_visible(timeout=WAIT_MS)
            card = page.locator(f'#flow .card[data-topology="{triage["name"]}"]')
            expect(card).to_be_visible()
            page.wait_for_function(
                """([name]) => {
                    const card = document.querySelector(`#flow .card[data-topology="${name}"]`);
                    const n = (s) => Number(card.querySelector(`[data-stat="${s}"]`)
                        .textContent.replaceAll(",", ""));
                    return n("events_in") >= 3 && n("outputs") >= 3 && n("latency_outputs") >= 3;
                }""",
                arg=[triage["name"]],
                timeout=WAIT_MS,
            )
            # In flight: the worker's group has committed past the three events.
            page.wait_for_function(
                """([name]) => {
                    const card = document.querySelector(`#flow .card[data-topology="${name}"]`);
                    const cells = [...card.querySelectorAll(".partitions tbody tr")]
                        .map((tr) => tr.children[2].textContent.replaceAll(",", ""));
                    const committed = cells.map(Number).filter((n) => !Number.isNaN(n));
                    return committed.reduce((a, b) => a + b, 0) >= 3 &&
                        card.querySelector('[data-stat="in_flight"]').textContent === "0";
                }""",
                arg=[triage["name"]],
                timeout=WAIT_MS,
            )
            # The lineage of one output opens with a click.
            page.locator('#outputs tr.output[data-event-id="console-0"]').click()
            lineage = page.locator("#outputs tr.lineage:visible")
            expect(lineage).to_contain_text("classify")
            expect(lineage).to_contain_text("retrieved passages")
            expect(lineage).to_contain_text(
                f"topology {triage['name']} version {triage['version']}"
            )

            # The dead letter, with its stage; the image is put in place, then replayed.
            dead = page.locator('#dead-letters tr[data-event-id="console-photo"]')
            expect(dead).to_be_visible(timeout=WAIT_MS)
            expect(dead).to_contain_text("image")
            _png(later)
            questions: list[str] = []

            def accept(dialog: Any) -> None:
                questions.append(dialog.message)
                dialog.accept()

            page.once("dialog", accept)
            dead.locator("button.replay").click()
            expect(page.locator("#notice")).to_contain_text(
                "Replayed console-photo", timeout=30_000
            )
            assert questions and "console-photo" in questions[0]

            # A second click says when it was replayed; declined, nothing is sent (the audit
            # topic holds one record at the end).
            def accept_then_decline(dialog: Any) -> None:
                questions.append(dialog.message)
                dialog.accept() if len(questions) == 2 else dialog.dismiss()

            page.on("dialog", accept_then_decline)
            dead.locator("button.replay").click()
            for _ in range(100):  # both dialogs come and go
                if len(questions) == 3:
                    break
                page.wait_for_timeout(100)
            page.remove_listener("dialog", accept_then_decline)
            assert "was replayed at" in questions[2]

            # The replayed event's own result: an output this time.
            replayed = page.locator('#outputs tr.output[data-event-id="console-photo"]')
            expect(replayed).to_be_visible(timeout=WAIT_MS)
            page.locator("#search").fill("console-photo")
            expect(page.locator("#outputs tr.output")).to_have_count(1, timeout=10_000)
            page.locator("#search").fill("")
            expect(page.locator("#outputs tr.output")).to_have_count(4, timeout=10_000)
            expect(page.locator("#cost-since")).to_contain_text(
                "Over the 4 outputs", timeout=15_000
            )
            expect(page.locator("#cost-tenants tbody tr")).to_have_count(1)
            # Spend against the budget, from the workers' spend changelog.
            page.wait_for_function(
                """() => {
                    const cell = document.querySelector('#spend tr[data-tenant="acme"] td.num');
                    return cell && Number(cell.textContent) > 0;
                }""",
                timeout=30_000,
            )
            assert all(token not in page.content() for token in TOKENS)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # A read-only token sees the dead letter but no replay button.
            viewer = browser.new_page()
            _open(viewer, base, VIEWER)
            seen = viewer.locator('#dead-letters tr[data-event-id="console-photo"]')
            expect(seen).to_be_visible(timeout=WAIT_MS)
            expect(viewer.locator("#dead-letters button.replay")).to_have_count(0)
        finally:
            browser.close()

    status, result, _ = _call(f"{base}/v1/results/console-photo?wait=30", OPERATOR, timeout=60)
    assert status == 200 and result["record_type"] == "output", result
    status, letters, _ = _call(f"{base}/v1/console/dead-letters", VIEWER)
    letter = next(d for d in letters["dead_letters"] if d["event_id"] == "console-photo")
    place = f"{letter['topic']}/{letter['partition']}/{letter['offset']}"
    status, body, _ = _call(
        f"{base}/v1/console/dead-letters/{place}/replay", VIEWER, body={}, timeout=30
    )
    assert status == 403, body

    (audit,) = _audit_records(console["bootstrap"], console["audit_topic"])
    assert audit["action"] == "replay_dead_letter" and audit["tenant"] == "acme"
    assert audit["dead_letter"]["event_id"] == "console-photo"
    assert audit["dead_letter"]["topic"] == images["dead_letter_topic"]
    assert audit["republished"]["topic"] == images["input_topic"]
