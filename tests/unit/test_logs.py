"""Repeated log records are held back: a broker outage makes aiokafka log the same errors
many times a second, which would bury every other line for as long as it lasts."""

from __future__ import annotations

import logging

from llmflow.logs import MAX_KINDS, RepeatFilter


def _record(
    msg: str, *args: object, name: str = "aiokafka", level: int = logging.ERROR
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_one_record_of_a_kind_per_window_then_the_count_held_back() -> None:
    now = [0.0]
    repeats = RepeatFilter(window_s=10, clock=lambda: now[0])
    shown = []
    # 30 a second for a minute, with varying arguments: one kind.
    for tick in range(60 * 30):
        now[0] = tick / 30
        record = _record("Unable connect to node with id %s: %s", 1, f"errno {tick}")
        if repeats.filter(record):
            shown.append(record.getMessage())
    assert len(shown) == 6
    assert shown[0] == "Unable connect to node with id 1: errno 0"
    assert shown[1].endswith("[299 more like this held back]")


def test_kinds_are_apart_by_logger_level_and_template() -> None:
    repeats = RepeatFilter(window_s=10, clock=lambda: 0.0)
    assert repeats.filter(_record("a %s", 1))
    assert repeats.filter(_record("b %s", 1))
    assert repeats.filter(_record("a %s", 1, name="other"))
    assert repeats.filter(_record("a %s", 1, level=logging.WARNING))
    assert not repeats.filter(_record("a %s", 2))


def test_memory_stays_bounded_when_messages_are_preformatted() -> None:
    repeats = RepeatFilter(window_s=10, clock=lambda: 0.0)
    for n in range(10 * MAX_KINDS):
        assert repeats.filter(_record(f"event {n} failed"))
    assert len(repeats._kinds) <= MAX_KINDS
