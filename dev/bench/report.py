"""Benchmark results as files: `results.json`, a Markdown table and a bar chart of the ratios.

Every benchmark scenario reports its findings in one shape, so any scenario can be added to
the same table and chart without touching this module:

    results = {
        "machine": machine(),           # what the numbers depend on besides the code
        "scenarios": {
            "<scenario>": {             # e.g. "image_path"; the dict a scenario function returns
                "params": {...},        # every parameter the scenario ran with
                "note": "...",          # optional: a paragraph printed under the table
                ...,                    # anything else JSON-able: medians, raw runs, checks
                "ratios": [             # one entry per comparison, in display order
                    {
                        "name": "full / decode-only, 3 MP",
                        "value": 22.1,      # the side under test (median), in `unit`
                        "baseline": 66.3,   # the reference side (median), in `unit`
                        "ratio": 0.333,     # value / baseline
                        "target": 0.6,      # float, or None when there is no target
                        "unit": "images/s",
                        "better": "higher", # optional, default "higher": the target is met
                                            # when ratio >= target; "lower": ratio <= target
                        "simulator_cores": {"worker": 0.4, "lean": 0.9},
                                            # optional, runs against the model simulator: its
                                            # cores during each run behind the ratio
                    },
                ],
                "figures": [            # optional: absolute figures judged against a target
                    {                   # of their own (no baseline), after the ratios
                        "name": "lookup p99",
                        "value": 41.0,      # in `unit`
                        "target": 100.0,    # float, or None
                        "unit": "µs",
                        "better": "lower",  # "higher" (default): met when value >= target
                        "met": True,        # as `figure_met` judges it; None: no target
                    },
                ],
            },
        },
    }

`make_ratio` builds one ratio entry (computing `ratio`), `target_met` judges one, and
`write_report` turns the whole dict into files. Values are medians of interleaved runs;
`ratio` is the ratio of those medians, so the table's three numbers agree with each other.
`make_figure` and `figure_met` do the same for a figure: its row in the table shows no
baseline and no ratio, and the chart (of ratios) leaves it out.

Where ratios carry `simulator_cores`, the table gets a column with them, and a ratio with a
run that kept the simulator near a full core (`simulator_limited`) is marked so, in the table
and the chart: its rate may say more about the simulator than about what it served.
"""

from __future__ import annotations

import json
import math
import os
import platform
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from llmflow.services.broker.local import KAFKA_DIR

Better = Literal["higher", "lower"]

PACKAGES = ("faust-streaming", "aiokafka", "kafka-python", "openai", "pillow", "pydantic")
CHART_WIDTH_PX = 1000
CHART_DPI = 100
COLOURS = {True: "#2e7d32", False: "#c62828", None: "#5b7fa6"}  # met, missed, no target
SIMULATOR_LIMIT_CORES = 0.85
"""The model simulator serves from one event loop: at this share of a core it is the run's
bottleneck (a loop that never waits reads 0.95-1.0; the margin is the sampling's error)."""


class Ratio(TypedDict):
    """One comparison: the side under test against its baseline."""

    name: str
    value: float
    baseline: float
    ratio: float
    target: float | None
    unit: str
    better: NotRequired[Better]
    simulator_cores: NotRequired[dict[str, float | None]]


def make_ratio(
    name: str,
    value: float,
    baseline: float,
    *,
    unit: str,
    target: float | None = None,
    better: Better = "higher",
    simulator_cores: Mapping[str, float | None] | None = None,
) -> Ratio:
    """A ratio entry with `ratio` = value / baseline (NaN when the baseline is zero);
    `simulator_cores` by run, for ratios measured against the model simulator."""
    ratio = value / baseline if baseline else math.nan
    entry: Ratio = {
        "name": name,
        "value": value,
        "baseline": baseline,
        "ratio": ratio,
        "target": target,
        "unit": unit,
        "better": better,
    }
    if simulator_cores is not None:
        entry["simulator_cores"] = dict(simulator_cores)
    return entry


def target_met(ratio: Mapping[str, Any]) -> bool | None:
    """True or False against the target; None when there is no target or no number."""
    target = ratio.get("target")
    value = ratio.get("ratio")
    if target is None or value is None or math.isnan(value):
        return None
    if ratio.get("better", "higher") == "lower":
        return bool(value <= target)
    return bool(value >= target)


def simulator_limited(ratio: Mapping[str, Any]) -> bool:
    """Whether a run behind the ratio kept the model simulator near a full core."""
    cores = ratio.get("simulator_cores") or {}
    return any(c is not None and c >= SIMULATOR_LIMIT_CORES for c in cores.values())


def simulator_text(ratio: Mapping[str, Any]) -> str:
    """The simulator's cores by run ("0.42", or "worker 0.42, lean 0.95" for several),
    marked when it limited the run; a dash for ratios measured without it."""
    cores = {k: v for k, v in (ratio.get("simulator_cores") or {}).items() if v is not None}
    if not cores:
        return "—"
    if len(cores) == 1:
        text = f"{next(iter(cores.values())):.2f}"
    else:
        text = ", ".join(f"{run} {value:.2f}" for run, value in cores.items())
    return text + (" (simulator-limited)" if simulator_limited(ratio) else "")


class FigureEntry(TypedDict):
    """An absolute figure (a rate, a latency, a recall) against a target of its own."""

    name: str
    value: float
    target: float | None
    unit: str
    better: Better
    met: bool | None


def figure_met(figure: Mapping[str, Any]) -> bool | None:
    """True or False against the target; None when there is no target or no number."""
    target = figure.get("target")
    value = figure.get("value")
    if target is None or value is None or math.isnan(value):
        return None
    if figure.get("better", "higher") == "lower":
        return bool(value <= target)
    return bool(value >= target)


def make_figure(
    name: str,
    value: float,
    *,
    unit: str,
    target: float | None = None,
    better: Better = "higher",
) -> FigureEntry:
    """A figure entry, with `met` judged by `figure_met`."""
    entry: FigureEntry = {
        "name": name,
        "value": value,
        "target": target,
        "unit": unit,
        "better": better,
        "met": None,
    }
    entry["met"] = figure_met(entry)
    return entry


# --- machine --------------------------------------------------------------------------------


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first `key: value` line of a /proc file, if there is one."""
    try:
        for line in Path(path).read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def _memory_gib() -> float | None:
    total = _proc_field("/proc/meminfo", "MemTotal")  # "24576000 kB"
    if total is None:
        return None
    return round(int(total.split()[0]) / 1024**2, 1)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def kafka_version(pom: Path = KAFKA_DIR / "pom.xml") -> str | None:
    """`kafka.version` from the Maven file that fetches the local broker."""
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError):
        return None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "kafka.version" and element.text:
            return element.text.strip()
    return None


def machine() -> dict[str, Any]:
    """What the numbers depend on besides the code: CPU, memory, Python and versions."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in PACKAGES},
        "kafka": kafka_version(),
    }


def machine_line(info: Mapping[str, Any]) -> str:
    """One line naming the machine and the library versions behind the numbers."""
    parts = [
        str(info.get("cpu", "unknown CPU")),
        f"{info.get('cores_usable', info.get('cores', '?'))} cores",
    ]
    if info.get("memory_gib") is not None:
        parts.append(f"{info['memory_gib']} GiB RAM")
    parts.append(f"Python {info.get('python', '?')}")
    if info.get("platform"):
        parts.append(str(info["platform"]))
    versions = info.get("versions") or {}
    parts += [f"{name} {version}" for name, version in versions.items() if version]
    if info.get("kafka"):
        parts.append(f"Kafka {info['kafka']}")
    return "Machine: " + ", ".join(parts)


# --- table ----------------------------------------------------------------------------------


def _rows(results: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(label, ratio) for every ratio of every scenario, in order."""
    for scenario, data in (results.get("scenarios") or {}).items():
        for ratio in data.get("ratios") or []:
            yield f"{scenario}: {ratio['name']}", ratio


def _number(value: float | None) -> str:
    """Three significant figures or so, thousands separated; a dash for nothing."""
    if value is None or math.isnan(value):
        return "—"
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _target_text(ratio: Mapping[str, Any]) -> str:
    target = ratio.get("target")
    if target is None:
        return "—"
    sign = "≤" if ratio.get("better", "higher") == "lower" else "≥"
    return f"{sign} {target:,g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(results: Mapping[str, Any]) -> str:
    """One row per ratio and per figure, then the machine line: ready to paste into the
    README. A last column shows the simulator's cores when any ratio was measured on it."""
    with_simulator = any("simulator_cores" in ratio for _, ratio in _rows(results))
    lines = [
        "| scenario | measured | baseline | ratio | target | met? |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    if with_simulator:
        lines = [lines[0] + " simulator CPU (cores) |", lines[1] + "---|"]
    verdicts = {True: "yes", False: "no", None: "—"}
    for scenario, data in (results.get("scenarios") or {}).items():
        for ratio in data.get("ratios") or []:
            unit = ratio.get("unit", "")
            lines.append(
                f"| {_cell(scenario + ': ' + ratio['name'])} "
                f"| {_number(ratio.get('value'))} {_cell(unit)} "
                f"| {_number(ratio.get('baseline'))} {_cell(unit)} "
                f"| {_number(ratio.get('ratio'))} "
                f"| {_target_text(ratio)} "
                f"| {verdicts[target_met(ratio)]} |"
                + (f" {simulator_text(ratio)} |" if with_simulator else "")
            )
        for figure in data.get("figures") or []:
            unit = _cell(figure.get("unit", ""))
            target = figure.get("target")
            target_text = "—" if target is None else f"{_target_text(figure)} {unit}".rstrip()
            value_text = f"{_number(figure.get('value'))} {unit}".rstrip()
            lines.append(
                f"| {_cell(scenario + ': ' + figure['name'])} "
                f"| {value_text} "
                "| — | — "
                f"| {target_text} "
                f"| {verdicts[figure_met(figure)]} |" + (" — |" if with_simulator else "")
            )
    if results.get("machine"):
        lines += ["", machine_line(results["machine"])]
    return "\n".join(lines)


def markdown_report(results: Mapping[str, Any]) -> str:
    """The whole `results.md`: heading, table, machine line and each scenario's note."""
    parts = ["# Benchmark results", "", markdown_table(results)]
    notes = [
        f"- **{name}**: {data['note']}"
        for name, data in (results.get("scenarios") or {}).items()
        if data.get("note")
    ]
    if notes:
        parts += ["", "## Notes", "", *notes]
    return "\n".join(parts) + "\n"


# --- chart ----------------------------------------------------------------------------------


def write_chart(results: Mapping[str, Any], path: Path) -> Path:
    """A horizontal bar per ratio, its target as a black diamond, parity (1.0) dashed.

    1000 px wide at any number of rows. The axis turns logarithmic when the ratios span more
    than a factor of 20, so a 10x cost and a 0.8x throughput stay readable side by side.
    """
    rows = list(_rows(results))
    height_in = 1.6 + 0.55 * max(1, len(rows))
    fig = Figure(
        figsize=(CHART_WIDTH_PX / CHART_DPI, height_in), dpi=CHART_DPI, layout="constrained"
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ratios = [math.nan if r.get("ratio") is None else float(r["ratio"]) for _, r in rows]
    finite = [v for v in ratios if math.isfinite(v) and v > 0]
    targets = [float(r["target"]) for _, r in rows if r.get("target") is not None]
    span = [*finite, *targets, 1.0]
    log = min(span) > 0 and max(span) / min(span) > 20
    low = min(span) / 2 if log else 0.0
    high = max(span) * (3 if log else 1.22)

    positions = list(range(len(rows)))[::-1]  # first ratio at the top
    for y, (_, ratio), value in zip(positions, rows, ratios, strict=True):
        met = target_met(ratio)
        limited = simulator_limited(ratio)
        shown = value if math.isfinite(value) else low
        ax.barh(
            y, shown - low, left=low, height=0.6, color=COLOURS[met], hatch="//" if limited else ""
        )
        verdict = {True: "  met", False: "  missed", None: ""}[met]
        verdict += ", simulator-limited" if limited else ""
        target = ratio.get("target")
        label_x = shown if target is None else max(shown, float(target))
        ax.annotate(
            f"{_number(value)}x{verdict}",
            (label_x, y),
            xytext=(4 if target is None else 9, 0),
            textcoords="offset points",
            va="center",
            fontsize=10,
        )
        if target is not None:
            ax.plot([target], [y], marker="D", color="black", markersize=8, zorder=3)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1, zorder=0)
    if log:
        ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.set_yticks(positions, [label for label, _ in rows], fontsize=10)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("ratio = measured / baseline" + (" (log scale)" if log else ""), fontsize=10)
    ax.set_title("Benchmark ratios (medians of interleaved runs)", fontsize=12)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(
        handles=[
            Patch(color=COLOURS[True], label="target met"),
            Patch(color=COLOURS[False], label="target missed"),
            Patch(color=COLOURS[None], label="no target"),
            Line2D([], [], marker="D", color="black", linestyle="", label="target"),
            Line2D([], [], color="grey", linestyle="--", label="parity (1.0)"),
        ],
        loc="outside lower center",
        ncols=5,
        fontsize=9,
        frameon=False,
    )
    fig.savefig(path, format="png")
    return path


# --- files ----------------------------------------------------------------------------------


def print_report(results: Mapping[str, Any], out_dir: Path | None) -> None:
    """What a single-scenario command prints: the results as JSON, then the table; with
    `out_dir`, the files `write_report` writes there too."""
    print(json.dumps(results, indent=2, ensure_ascii=False))
    print()
    print(markdown_table(results))
    if out_dir is not None:
        for path in write_report(results, out_dir):
            print(f"wrote {path}")


def write_report(results: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write results.json, results.md and chart.png into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    md_path = out_dir / "results.md"
    md_path.write_text(markdown_report(results))
    chart_path = write_chart(results, out_dir / "chart.png")
    return [json_path, md_path, chart_path]
