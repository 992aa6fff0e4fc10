"""write_report turns a results dict into results.json, results.md and chart.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dev.bench.report import (
    figure_met,
    make_figure,
    make_ratio,
    markdown_table,
    target_met,
    write_report,
)


def tiny_results() -> dict[str, Any]:
    return {
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "cores_usable": 2,
            "memory_gib": 4.0,
            "python": "3.11.0",
            "platform": "Linux-test",
            "versions": {"pydantic": "2.0.0"},
            "kafka": "4.1.1",
        },
        "scenarios": {
            "image_path": {
                "params": {"seconds_budget": 1},
                "note": "draft decoding applies to 12 MP only.",
                "ratios": [
                    make_ratio("full / decode-only, 3 MP", 24.0, 96.0, unit="images/s", target=0.6),
                    make_ratio(
                        "full / decode-only, 12 MP", 16.0, 22.0, unit="images/s", target=0.6
                    ),
                ],
            },
            "contract_cost": {
                "params": {"events": 10},
                "ratios": [
                    make_ratio("parse + serialise", 7.2, 1.9, unit="µs/event", better="lower")
                ],
            },
        },
    }


def test_make_ratio_and_verdicts() -> None:
    missed = make_ratio("a", 1.0, 4.0, unit="x", target=0.6)
    met_when_lower = make_ratio("b", 1.0, 4.0, unit="x", target=0.5, better="lower")
    assert missed["ratio"] == 0.25
    assert target_met(missed) is False
    assert target_met(met_when_lower) is True
    assert target_met(make_ratio("c", 1.0, 2.0, unit="x")) is None
    assert math.isnan(make_ratio("d", 1.0, 0.0, unit="x", target=1.0)["ratio"])
    assert target_met(make_ratio("d", 1.0, 0.0, unit="x", target=1.0)) is None


def test_write_report_writes_three_files(tmp_path: Path) -> None:
    results = tiny_results()
    paths = write_report(results, tmp_path / "out")

    assert [p.name for p in paths] == ["results.json", "results.md", "chart.png"]
    assert all(p.is_file() for p in paths)
    json_path, md_path, chart_path = paths
    assert json.loads(json_path.read_text()) == results

    markdown = md_path.read_text()
    assert "| scenario | measured | baseline | ratio | target | met? |" in markdown
    assert (
        "| image_path: full / decode-only, 3 MP | 24.0 images/s | 96.0 images/s "
        "| 0.250 | ≥ 0.6 | no |" in markdown
    )
    assert "| image_path: full / decode-only, 12 MP |" in markdown
    assert "| 0.727 | ≥ 0.6 | yes |" in markdown
    assert (
        "| contract_cost: parse + serialise | 7.20 µs/event | 1.90 µs/event | 3.79 | — | — |"
        in (markdown)
    )
    assert "Machine: Test CPU, 2 cores, 4.0 GiB RAM" in markdown
    assert "Kafka 4.1.1" in markdown
    assert "draft decoding applies to 12 MP only." in markdown
    assert markdown_table(results) in markdown

    png = chart_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width = int.from_bytes(png[16:20], "big")  # IHDR width
    assert width == 1000


def test_empty_and_missing_numbers_still_render(tmp_path: Path) -> None:
    paths = write_report({"machine": {}, "scenarios": {}}, tmp_path / "empty")
    assert paths[2].read_bytes().startswith(b"\x89PNG")
    assert "| scenario |" in paths[1].read_text()

    no_number = {"name": "n", "value": None, "baseline": 0, "ratio": None, "target": 1.0}
    results = {"scenarios": {"broken": {"ratios": [{**no_number, "unit": "x"}]}}}
    paths = write_report(results, tmp_path / "broken")
    assert "| broken: n | — x | 0.000 x | — | ≥ 1 | — |" in paths[1].read_text()
    assert paths[2].read_bytes().startswith(b"\x89PNG")


def test_figures_render_with_their_own_targets(tmp_path: Path) -> None:
    rate = make_figure("materialization", 61234.0, unit="records/s", target=50000.0)
    slow = make_figure("lookup p99", 134.0, unit="µs", target=100.0, better="lower")
    plain = make_figure("lookup p50", 59.4, unit="µs", better="lower")
    assert (rate["met"], slow["met"], plain["met"]) == (True, False, None)
    assert figure_met({"value": None, "target": 1.0}) is None
    ratio = make_ratio("a / b", 2.0, 1.0, unit="x", target=1.5)
    results = {"scenarios": {"orgdata": {"ratios": [ratio], "figures": [rate, slow, plain]}}}

    table = markdown_table(results)
    lines = table.splitlines()
    assert lines[2].startswith("| orgdata: a / b |")  # ratios first, then figures
    rate_row = "| orgdata: materialization | 61,234 records/s | — | — | ≥ 50,000 records/s | yes |"
    assert rate_row in table
    assert "| orgdata: lookup p99 | 134 µs | — | — | ≤ 100 µs | no |" in table
    assert "| orgdata: lookup p50 | 59.4 µs | — | — | — | — |" in table
    recall = make_figure("recall@3", 0.95, unit="", target=0.9)
    assert "| x: recall@3 | 0.950 | — | — | ≥ 0.9 | yes |" in markdown_table(
        {"scenarios": {"x": {"figures": [recall]}}}
    )
    paths = write_report(results, tmp_path / "figures")
    assert json.loads(paths[0].read_text())["scenarios"]["orgdata"]["figures"][1]["met"] is False
    assert paths[2].read_bytes().startswith(b"\x89PNG")  # the chart keeps to the ratios
