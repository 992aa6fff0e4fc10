"""`stopping()`: a task cancelled from outside stops; a CancelledError that leaked out of a
library does not stop a reader loop."""

from __future__ import annotations

import asyncio
import contextlib

from llmflow.services.broker.cancel import stopping


async def _reader(answers: list[bool], started: asyncio.Event, leak: bool) -> None:
    """Catches CancelledError like the gateway's and the worker's reader loops."""
    while True:
        try:
            started.set()
            if leak:
                leak = False
                raise asyncio.CancelledError  # as aiokafka's stop() lets one out
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            answers.append(stopping())
            if answers[-1]:
                raise


async def test_a_leaked_cancellation_goes_on_and_a_real_one_stops() -> None:
    answers: list[bool] = []
    started = asyncio.Event()
    task = asyncio.create_task(_reader(answers, started, leak=True))
    await started.wait()
    await asyncio.sleep(0)
    assert answers == [False] and not task.done()  # the leaked one: reading goes on
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert answers == [False, True] and task.cancelled()


async def test_outside_a_task_nothing_is_stopping() -> None:
    assert stopping() is False
