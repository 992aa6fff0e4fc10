"""Stream ids name a position over every partition of a topology's result topics."""

from __future__ import annotations

import pytest

from llmflow.services.gateway.cursor import CursorError, decode, encode

TOPICS = ["out", "dlq", "parked"]


def test_round_trip() -> None:
    positions = {("out", 0): 15, ("out", 1): 7, ("dlq", 2): 3, ("parked", 0): 1}
    text = encode(positions, TOPICS)
    assert text == "o0:15,o1:7,d2:3,p0:1"
    assert decode(text, TOPICS) == positions


def test_other_topics_are_left_out() -> None:
    assert encode({("elsewhere", 0): 4, ("out", 10): 2, ("out", 2): 1}, TOPICS) == "o2:1,o10:2"


@pytest.mark.parametrize(
    "text",
    [
        *["x0:1", "o0", "o0:-1", "o0:1,", "o0:1;d0:2", "o1234567:1", "o0:1\nd0:2", "☃"],
        *["o0:9223372036854775808", "o0:9999999999999999999"],  # past int64: no Kafka offset
    ],
)
def test_a_malformed_id_is_an_error(text: str) -> None:
    with pytest.raises(CursorError):
        decode(text, TOPICS)


def test_too_many_parts() -> None:
    with pytest.raises(CursorError, match="too many"):
        decode(",".join(["o0:1"] * 20_000), TOPICS)


def test_the_largest_kafka_offset_is_a_position() -> None:
    assert decode("o0:9223372036854775807", TOPICS) == {("out", 0): 2**63 - 1}


def test_a_partition_at_offset_0_is_left_out_of_the_positions() -> None:
    # Where an unnamed partition starts anyway: a made-up `o99999:0` is not carried on.
    assert decode("o99999:0,o1:0,o2:5", TOPICS) == {(TOPICS[0], 2): 5}
