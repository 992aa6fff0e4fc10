"""How every llmflow command logs: one plain line per record on stderr, in one format.

Plain text on purpose: logs go to files, pipes and container runtimes far more often than
to a terminal, and an escape code there is noise. The worker keeps faust from installing
its own (coloured) handlers, so its records come through here too.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The level names the commands accept (`llmflow worker --loglevel`), as logging levels.
LEVELS = {
    "crit": logging.CRITICAL,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
}


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
    root.addHandler(handler)
    root.setLevel(level)
    # kafka-python logs every failed connection attempt; the commands report a broker out
    # of reach once, with the setting to fix.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
