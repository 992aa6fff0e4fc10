"""How every llmflow command logs: one plain line per record on stderr, in one format.

Plain text on purpose: logs go to files, pipes and container runtimes far more often than
to a terminal, and an escape code there is noise. The worker keeps faust from installing
its own (coloured) handlers, so its records come through here too.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The level names the commands accept (`llmflow worker --loglevel`), as logging levels.
LEVELS = {
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
}


class RepeatFilter(logging.Filter):
    """Lets one record of a kind (logger, level, message template) through per `window_s`,
    and says on the next one let through how many it held back. A broker outage makes
    aiokafka log the same few errors 30 times a second: minutes of it would bury
    everything else."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        self._kinds: dict[tuple[str, int, str], list[float]] = {}  # kind -> [shown at, held]
        self._lock = threading.Lock()  # handlers filter outside their own lock

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                return False
            if len(self._kinds) >= MAX_KINDS:  # messages formatted before logging vary
                self._kinds.clear()
            self._kinds[kind] = [now, 0]
        if seen is not None and seen[1]:
            held = int(seen[1])
            record.msg = f"{record.msg} [{held} more like this held back]"
        return True


# Kinds remembered at once; more are forgotten together (their next record shows).
MAX_KINDS = 1000


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to `sys.stderr` as it is at each record, not as it was at setup (tests and
    embedding programs swap it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


def setup_logging(level: int = logging.WARNING) -> None:
    """Send every record of `level` and above to stderr in `LOG_FORMAT`.

    Idempotent: a second call replaces the handler of the first (and only that one: a
    handler someone else installed, such as a test runner's, stays).
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RepeatFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # kafka-python logs every failed connection attempt; the commands report a broker out
    # of reach once, with the setting to fix.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
