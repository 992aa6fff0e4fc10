"""Group commit: the writes of one changelog key, one at a time, each carrying every change
made before it starts.

A record's value is the whole state of its key (all of a partition's answered offsets, all
of an event's answers), so one write can make many changes durable at once. A change made
while no write of the key is in flight is written at once; changes made while one is in
flight wait for it and share the next write. So no change waits longer than one extra
write, and concurrent changes of a key cost one record between them instead of one each.

One write at a time also keeps the key's records in order: a write is issued only after the
previous one was acked, so the latest acked record holds every change requested before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class GroupCommit:
    """Serialises the writes of one key; `request()` returns once a write that started after
    it was called is acked.

    `write` must take its snapshot of the state before its first `await`: what is changed
    before `request()` is called is then in the write that serves it.
    """

    def __init__(self, write: Callable[[], Awaitable[None]]) -> None:
        self._write = write
        self._next: asyncio.Future[None] | None = None  # the write the next requests share
        self._writer: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """No write in flight or waiting."""
        return self._writer is None

    async def request(self) -> None:
        """Make the changes made so far durable; raises what the write that carries them
        raised. Cancelling a caller does not cancel the write others wait for."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        waiting = self._next
        if self._writer is None:
            self._writer = asyncio.create_task(self._run())
        await asyncio.shield(waiting)

    async def _run(self) -> None:
        try:
            while (waiting := self._next) is not None:
                self._next = None  # later requests wait for the write after this one
                try:
                    await self._write()
                except asyncio.CancelledError:
                    waiting.cancel()
                    raise
                except Exception as exc:
                    if not waiting.done():
                        waiting.set_exception(exc)
                else:
                    if not waiting.done():
                        waiting.set_result(None)
        finally:
            self._writer = None
            if self._next is not None and not self._next.done():
                self._next.cancel()  # the writer was cancelled: nothing will serve them
                self._next = None
