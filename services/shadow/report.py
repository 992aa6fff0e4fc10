"""A comparison as Markdown (for people and pull requests) and as a PNG chart (Pillow, which
the pipeline already uses for images): agreement per call and field, cost and p95 latency
per call, live beside shadow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont


def markdown(report: dict[str, Any]) -> str:
    head = report["head"]
    events, sides = report["events"], report["sides"]
    lines = [
        f"# {head['topology']}: live v{head['live_version']} against "
        f"shadow v{head['shadow_version']}",
        "",
        f"{events['compared']} events compared: {events['shadow_results']} in the shadow "
        f"topic {head['shadow_topic']}, {events['only_in_shadow']} of them without a live "
        f"result yet (live topics {', '.join(head['live_topics'])}: "
        f"{head.get('live_records_read', events['live_results'])} records read).",
        "",
        "| | live | shadow |",
        "|---|---:|---:|",
    ]
    rows = [
        ("outputs", "outputs", "{}"),
        ("dead letters", "dead_letters", "{}"),
        ("parked", "parked", "{}"),
        ("dead-letter rate", "dead_letter_rate", "{:.1%}"),
        ("event latency p50, ms", "latency_p50_ms", "{:,.1f}"),
        ("event latency p95, ms", "latency_p95_ms", "{:,.1f}"),
        ("tokens", "tokens", "{:,}"),
        ("cost, USD", "cost_usd", "{:.6f}"),
    ]
    ours, theirs = sides["live"], sides["shadow"]
    for label, key, shape in rows:
        lines.append(f"| {label} | {_cell(ours[key], shape)} | {_cell(theirs[key], shape)} |")
    for route in sorted(set(ours["routes"]) | set(theirs["routes"])):
        counts = ours["routes"].get(route, 0), theirs["routes"].get(route, 0)
        lines.append(f"| route {_text(route)} | {counts[0]} | {counts[1]} |")
    for name, call in report["calls"].items():
        lines += ["", f"## {_text(name)}", "", _agreement_line(call), ""]
        lines += ["| | live | shadow |", "|---|---:|---:|"]
        for label, key, shape in [
            ("answered", "answered", "{}"),
            ("skipped", "skipped", "{}"),
            ("skip rate", "skip_rate", "{:.1%}"),
            ("tokens in", "tokens_in", "{:,}"),
            ("tokens out", "tokens_out", "{:,}"),
            ("cost, USD", "cost_usd", "{:.6f}"),
            ("latency p50, ms", "latency_p50_ms", "{:,.1f}"),
            ("latency p95, ms", "latency_p95_ms", "{:,.1f}"),
        ]:
            live, shadow = _cell(call["live"][key], shape), _cell(call["shadow"][key], shape)
            lines.append(f"| {label} | {live} | {shadow} |")
        if call["field_agreement"]:
            lines += ["", "| field | agreement |", "|---|---:|"]
            lines += [
                f"| {_text(f)} | {share:.1%} |" for f, share in call["field_agreement"].items()
            ]
        for field_name, table in call["confusion"].items():
            lines += ["", *_confusion(field_name, table)]
    judged = report.get("judge")
    if judged:
        lines += [
            "",
            f"## Judge ({judged['model']}, rubric {judged['rubric_version']})",
            "",
            f"{judged['pairs']} pairs of differing answers, {judged['failed']} not scored, "
            f"${judged['cost_usd']:.6f}.",
            "",
            "| call | pairs | live score | shadow score | preferred |",
            "|---|---:|---:|---:|---|",
        ]
        for name, c in judged["calls"].items():
            preferred = ", ".join(f"{k} {v}" for k, v in sorted(c["preferred"].items()))
            lines.append(
                f"| {name} | {c['pairs']} | {c['live_score_mean']} | "
                f"{c['shadow_score_mean']} | {preferred} |"
            )
    if report["changed_most"]:
        lines += ["", "## Events that changed most", "", "| event | change | by call |"]
        lines.append("|---|---:|---|")
        for changed in report["changed_most"]:
            by_call = ", ".join(f"{_text(k)} {v:.2f}" for k, v in changed["calls"].items())
            event = _text(changed["event"]).replace("`", "'")
            lines.append(f"| `{event}` | {changed['change']:.2f} | {by_call} |")
    return "\n".join(lines) + "\n"


def _agreement_line(call: dict[str, Any]) -> str:
    parts = [f"{call['pairs']} pairs answered on both sides"]
    if call["exact_match"] is not None:
        parts.append(f"{call['exact_match']:.1%} identical")
    if call["similarity_mean"] is not None:
        parts.append(
            f"similarity mean {call['similarity_mean']:.3f}, min {call['similarity_min']:.3f}"
        )
    return "; ".join(parts) + "."


def _confusion(name: str, table: dict[str, dict[str, int]]) -> list[str]:
    columns = sorted({shadow for row in table.values() for shadow in row})
    lines = [
        f"`{_text(name)}`: live (rows) against shadow (columns)",
        "",
        "| live \\ shadow | " + " | ".join(map(_text, columns)) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for live, row in sorted(table.items()):
        counts = " | ".join(str(row.get(c, 0)) for c in columns)
        lines.append(f"| {_text(live)} | {counts} |")
    return lines


def _text(value: str, limit: int = 80) -> str:
    """A value from the records (an answer, an event id) as one table cell: no line break,
    no `|` that would end the cell, and not too long."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _cell(value: Any, shape: str) -> str:
    return "-" if value is None else shape.format(value)


# --- chart ---------------------------------------------------------------------------------

_WIDTH, _ROW, _LABEL, _MARGIN = 900, 22, 260, 16
_LIVE, _SHADOW, _AGREE, _INK = (90, 120, 160), (220, 130, 50), (70, 150, 90), (30, 30, 30)


def chart(report: dict[str, Any], path: Path) -> Path:
    """Three panels: agreement (fields, text similarity) per call, then cost and p95
    latency per call, live beside shadow, each bar scaled to the panel's largest value."""
    agreement: list[tuple[str, float]] = []
    for name, call in report["calls"].items():
        agreement += [(f"{name}.{f}", share) for f, share in call["field_agreement"].items()]
        if call["similarity_mean"] is not None:
            agreement.append((f"{name} (text)", call["similarity_mean"]))
    paired = {
        "cost, USD": [
            (n, c["live"]["cost_usd"], c["shadow"]["cost_usd"]) for n, c in report["calls"].items()
        ],
        "latency p95, ms": [
            (n, c["live"]["latency_p95_ms"] or 0.0, c["shadow"]["latency_p95_ms"] or 0.0)
            for n, c in report["calls"].items()
        ],
    }
    rows = 2 + len(agreement) + sum(2 + 2 * len(v) for v in paired.values())
    image = Image.new("RGB", (_WIDTH, _MARGIN * 2 + _ROW * rows), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    head = report["head"]
    y = _MARGIN
    draw.text(
        (_MARGIN, y),
        f"{head['topology']}: live v{head['live_version']} vs shadow v{head['shadow_version']}"
        f" ({report['events']['compared']} events)",
        fill=_INK,
        font=font,
    )
    y += _ROW * 2
    bar_width = _WIDTH - _LABEL - 3 * _MARGIN - 60
    for label, share in agreement:
        draw.text((_MARGIN, y + 4), label[:40], fill=_INK, font=font)
        draw.rectangle([_LABEL, y + 3, _LABEL + bar_width, y + _ROW - 3], outline=(200, 200, 200))
        draw.rectangle([_LABEL, y + 3, _LABEL + int(bar_width * share), y + _ROW - 3], fill=_AGREE)
        draw.text((_LABEL + bar_width + 8, y + 4), f"{share:.0%}", fill=_INK, font=font)
        y += _ROW
    for title, values in paired.items():
        y += _ROW
        draw.text((_MARGIN, y), f"{title} (blue live, orange shadow)", fill=_INK, font=font)
        y += _ROW
        top = max([max(a, b) for _, a, b in values] or [0.0]) or 1.0
        for name, live, shadow in values:
            for value, colour, side in ((live, _LIVE, "live"), (shadow, _SHADOW, "shadow")):
                draw.text((_MARGIN, y + 4), f"{name} {side}"[:40], fill=_INK, font=font)
                end = _LABEL + int(bar_width * value / top)
                draw.rectangle([_LABEL, y + 3, max(_LABEL + 1, end), y + _ROW - 3], fill=colour)
                draw.text((_LABEL + bar_width + 8, y + 4), f"{value:.4g}", fill=_INK, font=font)
                y += _ROW
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG")
    return path
