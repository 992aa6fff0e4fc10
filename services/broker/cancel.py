"""Telling a real cancellation from one that leaked out of aiokafka.

After a broker outage, aiokafka's consumer `stop()` can let its fetcher task's
`CancelledError` out into the caller. A reader loop that must go on catches it and asks
`stopping()`: only when its own task is being cancelled does the process stop."""

from __future__ import annotations

import asyncio


def stopping() -> bool:
    """Whether the running task itself is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
