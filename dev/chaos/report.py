"""The suite's one table (markdown), and where it is published."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dev.chaos.scenarios import Row

COLUMNS = (
    "scenario",
    "events",
    "outputs",
    "dead letters",
    "lost",
    "duplicates before SDK dedupe",
    "duplicates after SDK dedupe",
    "calls paid twice",
    "time to drain (s)",
    "notes",
)
PLACEHOLDER = "<!-- chaos-table -->"


def _n(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def cells(row: Row) -> list[str]:
    notes = "; ".join(row.notes).replace("|", "/")
    c = row.counts
    if c is None:
        return [row.scenario, *(["n/a"] * 8), notes]
    drain = "n/a" if c.drain_s is None else f"{c.drain_s:.1f}"
    return [
        row.scenario,
        _n(c.events),
        _n(c.outputs),
        _n(c.dead_letters),
        _n(c.lost),
        _n(c.duplicates_before),
        _n(c.duplicates_after),
        _n(c.paid_twice),
        drain,
        "; ".join([*c.notes, *row.notes]).replace("|", "/"),
    ]


def markdown_table(rows: Sequence[Row]) -> str:
    right = {"events", "outputs", "dead letters", "lost", "calls paid twice"}
    right |= {"duplicates before SDK dedupe", "duplicates after SDK dedupe", "time to drain (s)"}
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---:" if name in right else "---" for name in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def failed(rows: Sequence[Row]) -> list[str]:
    """Scenarios that lost events or could not count them."""
    return [
        row.scenario
        for row in rows
        if row.error is not None or (row.counts is not None and row.counts.lost > 0)
    ]


def document(table: str, about: str) -> str:
    return (
        "# Reliability suite: latest run\n\n"
        "`make chaos` (`python -m dev.chaos --publish`); see the README section "
        '"Reliability suite" for what each scenario does and how each column is counted.\n\n'
        f"{table}\n\n{about}\n"
    )


def publish(table: str, about: str, docs: Path, readme: Path) -> list[Path]:
    """Write `docs/chaos.md`, and put the table under the README's placeholder line
    (replacing the table there, if any)."""
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(document(table, about))
    written = [docs]
    if readme.exists():
        lines = readme.read_text().splitlines()
        if PLACEHOLDER in lines:
            at = lines.index(PLACEHOLDER) + 1
            end = at
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            lines[at:end] = table.splitlines()
            readme.write_text("\n".join(lines) + "\n")
            written.append(readme)
    return written
