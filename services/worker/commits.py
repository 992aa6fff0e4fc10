"""faust commits only what was acked: a replacement for its offset bookkeeping.

faust-streaming 0.15 commits the highest run of consecutive acked offsets of a partition.
It checks that the run starts where the last commit ended with an off-by-one (a single
missing offset passes), and not at all while it does not know the last commit: after a
rebalance revoked the partition (it forgets its offsets first, then waits for the events
in flight and commits what they ack), until it has read the commits back (records already
flow by then), and for a partition never committed. Records dropped on the way (buffers
cleared by a rebalance, records of an old generation skipped) were committed without ever
being answered. Offsets that hold no record (a transactional producer's commit markers)
it tracks as gaps between offsets read, with bounds off by one, so that a gap that covers
records read again after a seek also occurs.

Here the commit of a partition moves from its floor (the last commit: kept across a
revocation, read back with the commits, or, for a partition never committed, its first
offset) up to the first offset the consumer has read and no event has acked. Offsets never
read below one that was read hold no record (Kafka returns a partition's records in order),
so commit markers do not hold commits back; a record read and dropped always does, until
it is read again and answered: when the first such record has been neither acked nor in
flight for `REREAD_AFTER_S` while later ones were acked, the partition is sought back to it
(answered records after it are skipped by their answered marks). Until a partition's floor
is known, nothing of it is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.types import TP

log = logging.getLogger(__name__)

# How long the first record read and not acked may be out of flight, with later records
# acked, before it counts as dropped (longer than an event waits in an agent's buffer).
REREAD_AFTER_S = 15.0
clock = time.monotonic

_faust_on_partitions_revoked = Consumer.on_partitions_revoked
_faust_on_partitions_assigned = Consumer.on_partitions_assigned
_faust_seek_to_committed = ThreadDelegateConsumer.seek_to_committed
_faust_getmany = ThreadDelegateConsumer._getmany


def floors(consumer: Any) -> dict[TP, int]:
    """partition -> the offset from which everything read must be acked before a commit."""
    known: dict[TP, int] = consumer.__dict__.setdefault("_llmflow_floors", {})
    return known


def reads(consumer: Any) -> dict[TP, set[int]]:
    """partition -> offsets read from the broker at or above the floor, not yet committed."""
    known: dict[TP, set[int]] = consumer.__dict__.setdefault("_llmflow_reads", {})
    return known


def committed(consumer: Any, tp: TP) -> int | None:
    """The group's commit of `tp` as this worker knows it: its own last commit, else the
    floor read back at the assignment; None while neither is known."""
    offset: int | None = getattr(consumer, "_committed_offset", {}).get(tp)
    return offset if offset is not None else floors(consumer).get(tp)


def _new_offset(self: Any, tp: TP) -> int | None:
    acked = self._acked[tp]
    if not acked:
        return None
    floor = self._committed_offset[tp]
    if floor is None:
        floor = floors(self).get(tp)
        if floor is None:
            return None  # not known yet: read back with the commits after the assignment
    done = set(acked)
    read = reads(self).setdefault(tp, set())
    unanswered = [offset for offset in read if offset >= floor and offset not in done]
    upto = min(unanswered) if unanswered else max(acked) + 1
    _forget_below(self, tp, upto)
    if unanswered and acked and max(acked) > upto:
        _read_again_if_dropped(self, tp, upto)
    return upto if upto > floor else None


def _read_again_if_dropped(consumer: Any, tp: TP, offset: int) -> None:
    """Seek back to `offset` once it has been out of flight for `REREAD_AFTER_S`."""
    stuck: dict[TP, tuple[int, float]] = consumer.__dict__.setdefault("_llmflow_stuck", {})
    if any(m.tp == tp and m.offset == offset for m in consumer._unacked_messages):
        stuck.pop(tp, None)  # an agent has it
        return
    now = clock()
    since = stuck.get(tp)
    if since is None or since[0] != offset:
        stuck[tp] = (offset, now)
        return
    if now - since[1] < REREAD_AFTER_S:
        return
    stuck[tp] = (offset, now)
    log.warning(
        "record %s[%d]@%d was read and dropped by the consumer; reading from it again",
        tp.topic,
        tp.partition,
        offset,
    )
    _background.add(task := asyncio.ensure_future(consumer.seek(tp, offset)))
    task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()  # seeks kept alive until done


def _forget_below(consumer: Any, tp: TP, offset: int) -> None:
    acked = consumer._acked[tp]
    below = [o for o in acked if o < offset]
    if below:
        acked[:] = [o for o in acked if o >= offset]
        consumer._acked_index[tp].difference_update(below)
    read = reads(consumer).get(tp)
    if read:
        read.difference_update([o for o in read if o < offset])


async def _getmany(self: Any, active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109
    records = await _faust_getmany(self, active_partitions, timeout)
    known = reads(self)
    acks_enabled_for = self.app.topics.acks_enabled_for  # not changelogs: never committed
    for tp, batch in records.items():
        if acks_enabled_for(tp.topic):
            known.setdefault(tp, set()).update(record.offset for record in batch)
    return records


async def _add_gap(self: Any, tp: TP, offset_from: int, offset_to: int) -> None:
    """faust's gaps are not used (see above): not kept, so they cannot grow."""


async def _on_partitions_revoked(self: Any, revoked: set[TP]) -> None:
    # faust forgets the last commits before it commits what the events in flight ack
    known = floors(self)
    for tp in revoked:
        committed = self._committed_offset.get(tp)
        if committed is not None:
            known[tp] = max(committed, known.get(tp, committed))
    await _faust_on_partitions_revoked(self, revoked)


async def _on_partitions_assigned(self: Any, assigned: set[TP], generation_id: int = 0) -> None:
    # Another worker may have committed meanwhile: a floor kept from an earlier assignment
    # would take the group's commit back. Read back with the commits, soon after.
    known = floors(self)
    for tp in assigned:
        known.pop(tp, None)
    await _faust_on_partitions_assigned(self, assigned, generation_id)


async def _seek_to_committed(self: Any) -> Mapping[TP, int]:
    committed: Mapping[TP, int | None] = await _faust_seek_to_committed(self)
    known = floors(self)
    never: list[TP] = []
    for tp, offset in committed.items():
        if offset is not None and offset >= 0:
            known[tp] = offset
        else:
            never.append(tp)
    if never:  # read from the start (auto_offset_reset="earliest")
        known.update(await self.earliest_offsets(*never))
    # aiokafka seeks only to commits above 0: a partition with none (or 0) stayed where
    # it was, past records fetched and dropped while faust recovered its tables.
    acks_enabled_for = self.app.topics.acks_enabled_for
    rewind = {
        tp: known[tp]
        for tp, offset in committed.items()
        if not offset and tp in known and acks_enabled_for(tp.topic)
    }
    if rewind:
        await self.seek_wait(rewind)
    for tp, read in reads(self).items():  # records of an earlier assignment, if any
        if tp in known:
            read.difference_update([o for o in read if o < known[tp]])
    return committed  # type: ignore[return-value]


def commit_only_what_was_acked() -> None:
    """Install the fix (idempotent)."""
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]
    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    Consumer.on_partitions_revoked = _on_partitions_revoked  # type: ignore[method-assign]
    Consumer.on_partitions_assigned = _on_partitions_assigned  # type: ignore[method-assign]
    ThreadDelegateConsumer.seek_to_committed = _seek_to_committed  # type: ignore[method-assign]
    ThreadDelegateConsumer._getmany = _getmany  # type: ignore[method-assign]
