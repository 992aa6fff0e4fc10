"""A replay's pay-once state: answers and done marks written to its state topic (a fake
producer here), forgotten once committed past, and read back by a restarted replay."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from llmflow.schemas.outputs import ModelCallResult
from llmflow.services.shadow.state import ReplayState, position
from tests.unit.shadow.helpers import call

TOPIC = "support.triaged.shadow.2.state"


@dataclass(frozen=True, slots=True)
class Sent:
    topic: str
    key: bytes
    value: bytes | None


class FakeProducer:
    """aiokafka's `send`: returns a delivery future once the record is queued. Deliveries
    succeed at once, unless `hold` keeps them until `ack()`."""

    def __init__(self, hold: bool = False) -> None:
        self.sent: list[Sent] = []
        self.hold = hold
        self.unacked: list[asyncio.Future[None]] = []

    async def send(
        self, topic: str, key: bytes | None = None, value: bytes | None = None
    ) -> asyncio.Future[None]:
        assert key is not None
        self.sent.append(Sent(topic, key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.unacked.append(future)
        else:
            future.set_result(None)
        return future

    def ack(self) -> None:
        for future in self.unacked:
            future.set_result(None)
        self.unacked.clear()

    def keys(self, value: bool | None = None) -> list[str]:
        """Keys sent; `value=False` only tombstones, `True` only records with a value."""
        return [
            s.key.decode() for s in self.sent if value is None or (s.value is not None) == value
        ]


def _answer(call_id: str) -> ModelCallResult:
    return call("classify", {"priority": "high"}, call_id=call_id, tokens_in=12)


async def _event(state: ReplayState, partition: int, offset: int, *call_ids: str) -> None:
    """What replaying one event does: pay for its calls, then mark it done."""
    position.set((partition, offset))
    for call_id in call_ids:
        await state.put(_answer(call_id))
    await state.mark_done(partition, offset)


async def _run(state: ReplayState, partition: int, offset: int, *call_ids: str) -> None:
    """`_event` in a task of its own, as the replay runs each event (its own `position`)."""
    await asyncio.create_task(_event(state, partition, offset, *call_ids))


async def _run_reusing(state: ReplayState, partition: int, offset: int, call_id: str) -> None:
    """An event whose answer was paid for before (an earlier delivery, or run)."""

    async def one() -> None:
        position.set((partition, offset))
        assert state.get(call_id) is not None
        await state.mark_done(partition, offset)

    await asyncio.create_task(one())


def _restarted(sent: list[Sent], producer: FakeProducer | None = None) -> ReplayState:
    """A fresh state that read back everything `sent` (what `load` does, without Kafka)."""
    state = ReplayState(producer or FakeProducer(), TOPIC)
    for record in sent:
        assert record.topic == TOPIC
        state._apply(record.key.decode(), record.value)
    return state


async def test_an_answer_put_is_got_back() -> None:
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    position.set((0, 5))
    answer = _answer("c1")
    assert state.get("c1") is None
    await state.put(answer)
    assert state.get("c1") == answer
    assert state.get("c2") is None
    assert producer.sent == [Sent(TOPIC, b"paid:0:5:c1", answer.model_dump_json().encode())]
    assert state.size == 1


async def test_put_returns_once_the_answer_is_delivered() -> None:
    producer = FakeProducer(hold=True)
    state = ReplayState(producer, TOPIC)
    position.set((0, 1))
    put = asyncio.create_task(state.put(_answer("c1")))
    await asyncio.sleep(0.01)
    assert producer.keys() == ["paid:0:1:c1"] and not put.done()
    producer.ack()
    await put
    assert state.get("c1") is not None


async def test_done_marks() -> None:
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    assert not state.done(0, 5)
    await state.mark_done(0, 5)
    assert state.done(0, 5)
    assert not state.done(0, 6) and not state.done(1, 5)
    assert producer.sent == [Sent(TOPIC, b"done:0:5", b"1")]
    assert state.size == 1


async def test_forget_below_tombstones_what_events_before_the_commit_left() -> None:
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    await _run(state, 0, 3, "c03")
    await _run(state, 0, 5, "c05a", "c05b")
    await _run(state, 0, 8, "c08")
    await _run(state, 1, 2, "c12")
    assert state.size == 9
    written = len(producer.sent)

    await state.forget_below(0, 6)

    tombstones = producer.sent[written:]
    assert all(s.value is None and s.topic == TOPIC for s in tombstones)
    assert sorted(s.key.decode() for s in tombstones) == [
        "done:0:3",
        "done:0:5",
        "paid:0:3:c03",
        "paid:0:5:c05a",
        "paid:0:5:c05b",
    ]
    position.set((0, 9))
    assert state.get("c03") is None and state.get("c05a") is None and state.get("c05b") is None
    assert not state.done(0, 3) and not state.done(0, 5)
    # Later offsets and other partitions are kept.
    assert state.get("c08") is not None and state.done(0, 8)
    assert state.get("c12") is not None and state.done(1, 2)
    assert state.size == 4

    # Committing the same offset again has nothing left to delete.
    written = len(producer.sent)
    await state.forget_below(0, 6)
    assert len(producer.sent) == written


async def test_forget_below_is_exclusive_of_the_committed_offset() -> None:
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    await _run(state, 0, 5, "c5")
    await state.forget_below(0, 5)
    assert producer.keys(value=False) == []
    assert state.done(0, 5)
    await state.forget_below(0, 6)
    assert sorted(producer.keys(value=False)) == ["done:0:5", "paid:0:5:c5"]
    assert state.size == 0


async def test_forget_below_waits_for_the_tombstones() -> None:
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    await _run(state, 0, 1, "c1")
    producer.hold = True
    forget = asyncio.create_task(state.forget_below(0, 2))
    await asyncio.sleep(0.01)
    assert sorted(producer.keys(value=False)) == ["done:0:1", "paid:0:1:c1"]
    assert not forget.done()
    producer.ack()
    await forget


async def test_an_answer_reused_by_an_event_is_forgotten_with_it() -> None:
    # The answer was paid for by an earlier delivery; the event reusing it files it too.
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    await _run(state, 0, 1, "c1")
    await state.forget_below(0, 1)  # nothing yet
    await _run_reusing(state, 0, 7, "c1")
    await state.forget_below(0, 8)
    assert "paid:0:1:c1" in producer.keys(value=False) and "done:0:7" in producer.keys(value=False)
    assert state.size == 0


async def test_a_restarted_replay_sees_answers_and_done_marks() -> None:
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    await _run(state, 0, 3, "c3")
    await _run(state, 1, 4, "c4")
    position.set((0, 9))
    await state.put(_answer("c9"))  # in flight when the replay stopped: not done

    again = _restarted(producer.sent)
    assert again.size == state.size == 5
    assert again.done(0, 3) and again.done(1, 4) and not again.done(0, 9)
    assert again.get("c3") == _answer("c3")
    assert again.get("c9") == _answer("c9")


async def test_tombstones_remove_what_a_restarted_replay_reads_back() -> None:
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    await _run(state, 0, 3, "c3")
    await _run(state, 0, 4, "c4")
    await state.forget_below(0, 4)

    again = _restarted(producer.sent)
    position.set((0, 10))
    assert again.get("c3") is None and not again.done(0, 3)
    assert again.get("c4") is not None and again.done(0, 4)
    assert again.size == 2


async def test_a_restarted_replay_forgets_the_done_marks_it_read_back() -> None:
    producer = FakeProducer()
    await _run(ReplayState(producer, TOPIC), 0, 3, "c3")
    restarted_producer = FakeProducer()
    again = _restarted(producer.sent, restarted_producer)
    await again.forget_below(0, 4)
    assert "done:0:3" in restarted_producer.keys(value=False)
    assert not again.done(0, 3)


async def test_a_restarted_replay_forgets_answers_of_events_done_before() -> None:
    producer = FakeProducer()
    state = ReplayState(producer, TOPIC)
    position.set((0, 4))
    await state.put(_answer("c4"))  # event 4 in flight, so the group committed 4
    await _run(state, 0, 5, "c5")  # event 5 done

    restarted_producer = FakeProducer()
    again = _restarted(producer.sent, restarted_producer)
    # The restarted replay reads from 4: event 4 reuses its answer, event 5 is skipped.
    await _run_reusing(again, 0, 4, "c4")
    assert again.done(0, 5)
    await again.forget_below(0, 6)
    assert sorted(restarted_producer.keys(value=False)) == [
        "done:0:4",
        "done:0:5",
        "paid:0:4:c4",
        "paid:0:5:c5",
    ]
    assert again.size == 0


async def test_replays_of_other_ranges_share_the_topic_but_not_their_state() -> None:
    first = FakeProducer()
    mine = ReplayState(first, TOPIC, owner="g1")
    await _run(mine, 0, 3, "c3")
    assert [s.key for s in first.sent] == [b"g1|paid:0:3:c3", b"g1|done:0:3"]
    other = FakeProducer()
    theirs = ReplayState(other, TOPIC, owner="g2")
    await _run(theirs, 0, 4, "c4")
    # Read back, each replay sees its own keys only; hostile keys are skipped.
    again = ReplayState(FakeProducer(), TOPIC, owner="g1")
    for record in [*first.sent, *other.sent]:
        again.take(record.key, record.value)
    for key in [None, b"g1|", b"g1|nonsense", b"g1|paid:x:y:c", b"g1|done:1", b"\xff\xfe"]:
        again.take(key, b"1")
    position.set((0, 9))
    assert again.done(0, 3) and not again.done(0, 4)
    assert again.get("c3") is not None and again.get("c4") is None
    assert again.size == 2
