"""write_report turns a results dict into results.json, results.md and chart.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dev.bench.report import (
    SIMULATOR_LIMIT_CORES,
    figure_met,
    make_figure,
    make_ratio,
    markdown_table,
    simulator_limited,
    simulator_text,
    target_met,
    write_report,
)
from dev.bench.worker_scenarios import (
    OVERHEAD_TARGETS,
    missed,
    ratio_entry,
    simulator_note,
    table,
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


def test_simulator_cores_add_a_column_and_mark_limited_runs(tmp_path: Path) -> None:
    fair = make_ratio(
        "worker / lean, 200 ms model",
        950.0,
        1000.0,
        unit="events/s",
        target=0.9,
        simulator_cores={"worker": 0.31, "lean a": 0.34, "lean b": None},
    )
    limited = make_ratio(
        "worker / lean, instant model",
        420.0,
        1500.0,
        unit="events/s",
        target=0.5,
        simulator_cores={"worker": 0.4, "lean a": 0.97},
    )
    single = make_ratio(
        "calls/s vs C/0.2 s", 240.0, 250.0, unit="calls/s", simulator_cores={"c50": 0.2}
    )
    assert not simulator_limited(fair) and simulator_limited(limited)
    assert not simulator_limited({"simulator_cores": {"run": SIMULATOR_LIMIT_CORES - 0.01}})
    assert simulator_limited({"simulator_cores": {"run": SIMULATOR_LIMIT_CORES}})
    assert not simulator_limited(make_ratio("no simulator", 1.0, 1.0, unit="x"))
    assert simulator_text(fair) == "worker 0.31, lean a 0.34"  # a run without a reading left out
    assert simulator_text(limited) == "worker 0.40, lean a 0.97 (simulator-limited)"
    assert simulator_text(single) == "0.20"
    assert simulator_text({"simulator_cores": {"run": None}}) == "—"

    results = tiny_results()
    results["scenarios"]["overhead"] = {"ratios": [limited, fair]}
    results["scenarios"]["orgdata"] = {"figures": [make_figure("lookup p99", 40.0, unit="µs")]}
    table = markdown_table(results)
    assert table.splitlines()[0].endswith("| met? | simulator CPU (cores) |")
    assert table.splitlines()[1] == "|---|---:|---:|---:|---:|:---:|---|"
    assert (
        "| overhead: worker / lean, instant model | 420 events/s | 1,500 events/s | 0.280 "
        "| ≥ 0.5 | no | worker 0.40, lean a 0.97 (simulator-limited) |" in table
    )
    assert "| 0.950 | ≥ 0.9 | yes | worker 0.31, lean a 0.34 |" in table
    assert "| 0.250 | ≥ 0.6 | no | — |" in table  # ratios measured without the simulator
    assert "| orgdata: lookup p99 | 40.0 µs | — | — | — | — | — |" in table
    paths = write_report(results, tmp_path / "simulator")
    assert json.loads(paths[0].read_text())["scenarios"]["overhead"]["ratios"][0][
        "simulator_cores"
    ] == {"worker": 0.4, "lean a": 0.97}
    assert paths[2].read_bytes().startswith(b"\x89PNG")


def test_tables_without_simulator_cores_keep_six_columns() -> None:
    table = markdown_table(tiny_results())
    assert table.splitlines()[0] == "| scenario | measured | baseline | ratio | target | met? |"
    assert "simulator" not in table


def test_worker_scenario_ratios_carry_the_simulator_and_its_verdict() -> None:
    instant = ratio_entry(
        "worker / lean consumer events/s, instant model",
        421.0,
        1400.0,
        OVERHEAD_TARGETS[0.0],
        "events/s",
        simulator_cores={"worker": 0.412, "lean a": 0.93, "lean b": 0.951},
    )
    slow = ratio_entry(
        "worker / lean consumer events/s, 200 ms model",
        800.0,
        960.0,
        OVERHEAD_TARGETS[200.0],
        "events/s",
        simulator_cores={"worker": 0.2, "lean a": 0.25, "lean b": 0.24},
    )
    assert instant["simulator_cores"] == {"worker": 0.41, "lean a": 0.93, "lean b": 0.95}
    assert (instant["simulator_limited"], slow["simulator_limited"]) == (True, False)
    assert (missed(instant), missed(slow)) == (True, True)  # 0.30 < 0.5, 0.83 < 0.9
    note = simulator_note([instant, slow])
    assert note.startswith("Simulator-limited")
    assert "instant model (worker 0.41, lean a 0.93, lean b 0.95 (simulator-limited))" in note
    assert "200 ms model" not in note
    assert simulator_note([slow]) == ""
    lines = table([{"scenario": "overhead", "ratios": [instant, slow]}]).splitlines()
    assert lines[0].endswith("simulator cores")
    assert lines[2].endswith("MISS  worker 0.41, lean a 0.93, lean b 0.95 (simulator-limited)")
    assert lines[3].endswith("MISS  worker 0.20, lean a 0.25, lean b 0.24")
