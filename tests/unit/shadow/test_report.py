"""The comparison as Markdown and as a PNG chart."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from llmflow.schemas.results import Result
from llmflow.services.shadow.compare import compare
from llmflow.services.shadow.report import chart, markdown
from tests.unit.shadow.helpers import call, dead_letter, output


def _report(
    live: list[Result],
    shadow: list[Result],
    enums: Mapping[str, set[str]] | None = None,
) -> dict[str, Any]:
    """As `compare_topics` builds it."""
    return {
        "head": {
            "topology": "support_triage",
            "live_version": "1.0.0",
            "shadow_version": "2.0.0",
            "live_topics": ["support.triaged", "support.tickets.dlq"],
            "shadow_topic": "support.triaged.shadow.2.0.0",
            "unreadable_records": 0,
        },
        **compare(live, shadow, enums=enums),
    }


def _triage() -> dict[str, Any]:
    def event(event: str, priority: str, summary: str, **kw: Any) -> Result:
        return output(
            event,
            [
                call("classify", {"priority": priority, "reason": "r"}, latency_ms=120.0),
                call("summarize", summary, latency_ms=80.0, cost_usd=0.002),
            ],
            **kw,
        )

    live: list[Result] = [
        event("e1", "high", "Refund asked.", routes=["escalations"]),
        event("e2", "low", "Password reset."),
        event("e3", "high", "Login fails."),
        event("e0", "low", "not in the shadow"),
    ]
    shadow: list[Result] = [
        event("e1", "high", "Refund asked."),
        event("e2", "high", "Password reset, twice."),
        dead_letter("e3"),
        event("e4", "low", "new"),
        event("e5", "low", "new"),
    ]
    return _report(live, shadow, enums={"classify": {"priority"}})


def test_markdown_headline_and_event_counts() -> None:
    text = markdown(_triage())
    lines = text.splitlines()
    assert lines[0] == "# support_triage: live v1.0.0 against shadow v2.0.0"
    assert (
        "3 events compared: 5 in the shadow topic support.triaged.shadow.2.0.0, 2 of them "
        "without a live result yet (live topics support.triaged, support.tickets.dlq: 4 "
        "records read)."
    ) in text
    assert text.endswith("\n")


def test_markdown_side_table() -> None:
    lines = markdown(_triage()).splitlines()
    for row in [
        "| | live | shadow |",
        "| outputs | 3 | 2 |",
        "| dead letters | 0 | 1 |",
        "| parked | 0 | 0 |",
        "| dead-letter rate | 0.0% | 33.3% |",
        "| event latency p50, ms | 500.0 | 500.0 |",
        "| tokens | 90 | 60 |",
        "| cost, USD | 0.009000 | 0.006000 |",
        "| route escalations | 1 | 0 |",
    ]:
        assert row in lines, row


def test_markdown_per_call_sections() -> None:
    lines = markdown(_triage()).splitlines()
    classify, summarize = lines.index("## classify"), lines.index("## summarize")
    assert classify < summarize
    assert lines[classify + 2] == "2 pairs answered on both sides; 50.0% identical."
    assert lines[summarize + 2].startswith(
        "2 pairs answered on both sides; 50.0% identical; similarity mean 0."
    )
    section = lines[classify:summarize]
    for row in [
        "| answered | 3 | 2 |",
        "| skipped | 0 | 0 |",
        "| skip rate | 0.0% | 0.0% |",
        "| tokens in | 30 | 20 |",
        "| cost, USD | 0.003000 | 0.002000 |",
        "| latency p95, ms | 120.0 | 120.0 |",
        "| field | agreement |",
        "| priority | 50.0% |",
        "| reason | 100.0% |",
    ]:
        assert row in section, row
    # A text call has no field table.
    assert "| field | agreement |" not in lines[summarize:]


def test_markdown_confusion_table_counts() -> None:
    lines = markdown(_triage()).splitlines()
    at = lines.index("`priority`: live (rows) against shadow (columns)")
    assert lines[at + 2 : at + 6] == [
        "| live \\ shadow | high |",
        "|---|---:|",
        "| high | 1 |",
        "| low | 1 |",
    ]
    # `reason` is not a declared enum: no table.
    assert "`reason`: live (rows) against shadow (columns)" not in lines


def test_markdown_confusion_table_fills_absent_cells_with_zero() -> None:
    pairs = [("a", "a"), ("a", "b"), ("b", "b"), ("c", "a"), ("c", "a")]
    live: list[Result] = [output(f"e{i}", [call("c", {"f": x})]) for i, (x, _) in enumerate(pairs)]
    shadow: list[Result] = [
        output(f"e{i}", [call("c", {"f": y})]) for i, (_, y) in enumerate(pairs)
    ]
    lines = markdown(_report(live, shadow)).splitlines()
    at = lines.index("`f`: live (rows) against shadow (columns)")
    assert lines[at + 2 : at + 7] == [
        "| live \\ shadow | a | b |",
        "|---|---:|---:|",
        "| a | 1 | 1 |",
        "| b | 0 | 1 |",
        "| c | 2 | 0 |",
    ]


def test_markdown_events_that_changed_most() -> None:
    lines = markdown(_triage()).splitlines()
    at = lines.index("## Events that changed most")
    assert lines[at + 2] == "| event | change | by call |"
    assert lines[at + 4].startswith("| `id:e2@0:0` | ")
    assert "classify 0.50, summarize 0." in lines[at + 4]
    assert len(lines) == at + 5  # e1 did not change, e3 has no shadow output


def test_markdown_missing_figures_are_dashes() -> None:
    live: list[Result] = [dead_letter("e1")]
    text = markdown(_report(live, [dead_letter("e1")]))
    assert "| event latency p50, ms | - | - |" in text
    assert "| dead-letter rate | 100.0% | 100.0% |" in text
    assert "## " not in text  # no calls, nothing changed


def test_markdown_judge_section() -> None:
    report = _triage()
    report["judge"] = {
        "model": "gpt-4o",
        "rubric_version": "judge-0123abcd",
        "pairs": 3,
        "failed": 1,
        "cost_usd": 0.0042,
        "calls": {
            "summarize": {
                "pairs": 2,
                "live_score_mean": 2.5,
                "shadow_score_mean": 4.0,
                "preferred": {"tie": 1, "shadow": 1},
            }
        },
    }
    lines = markdown(report).splitlines()
    at = lines.index("## Judge (gpt-4o, rubric judge-0123abcd)")
    assert lines[at + 2] == "3 pairs of differing answers, 1 not scored, $0.004200."
    assert lines[at + 4] == "| call | pairs | live score | shadow score | preferred |"
    assert lines[at + 6] == "| summarize | 2 | 2.5 | 4.0 | shadow 1, tie 1 |"
    assert "## Judge" not in markdown(_triage())


def _fields(n: int) -> dict[str, Any]:
    answer = {f"f{i}": "x" for i in range(n)}
    live: list[Result] = [output("e1", [call("c", answer)])]
    return _report(live, live)


def test_chart_is_a_png_that_grows_with_the_fields(tmp_path: Path) -> None:
    small = chart(_fields(1), tmp_path / "small.png")
    large = chart(_fields(4), tmp_path / "nested" / "large.png")
    assert small == tmp_path / "small.png" and large.is_file()
    with Image.open(small) as a, Image.open(large) as b:
        assert a.format == b.format == "PNG"
        assert a.width == b.width == 900
        assert b.height - a.height == 3 * 22  # one row per field


def test_chart_of_a_full_report(tmp_path: Path) -> None:
    path = chart(_triage(), tmp_path / "triage.png")
    with Image.open(path) as image:
        image.load()
        # Title, 2 classify fields, summarize's text similarity, two panels of 2 calls.
        rows = 2 + 3 + 2 * (2 + 2 * 2)
        assert image.size == (900, 2 * 16 + 22 * rows)
        # Bars are drawn: the agreement colour is somewhere in the image.
        assert (70, 150, 90) in {colour for _, colour in image.getcolors(1 << 16) or []}


def test_chart_of_a_report_without_calls(tmp_path: Path) -> None:
    live: list[Result] = [dead_letter("e1")]
    path = chart(_report(live, live), tmp_path / "empty.png")
    with Image.open(path) as image:
        assert image.size == (900, 2 * 16 + 22 * (2 + 2 + 2))


def test_values_from_the_records_cannot_break_the_tables() -> None:
    hostile = "a|b\n## injected\r\n|"
    live: list[Result] = [output(hostile, [call("classify", {"priority": hostile})])]
    shadow: list[Result] = [output(hostile, [call("classify", {"priority": "x|y"})])]
    lines = markdown(_report(live, shadow, enums={"classify": {"priority"}})).splitlines()
    assert "## injected" not in [line.strip() for line in lines]

    def cells(line: str) -> int:
        return len(re.split(r"(?<!\\)\|", line)) - 2

    # Each table's rows have as many cells as its header.
    header = 0
    for line in lines:
        if not line.startswith("|"):
            header = 0
        elif header == 0:
            header = cells(line)
        else:
            assert cells(line) == header, line
    changed = lines[lines.index("## Events that changed most") + 4]
    assert changed.startswith("| `id:a\\|b ## injected \\|@0:0` |")
