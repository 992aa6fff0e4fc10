"""Stream ids: a position across every partition of a topology's result topics.

An id is, per partition, the offset after the last record the stream has passed (given or
filtered out): `o0:15,o1:7,d2:3` = output topic partition 0 from offset 15 on, partition 1
from 7, dead-letter topic partition 2 from 3 (`p`: the parked topic). A partition it does not
name is read from its start. Resuming after an id gives exactly the results not passed."""

from __future__ import annotations

import re

from llmflow.services.gateway.results import TP

ROLES = ("o", "d", "p")
"""The result topics of a topology, in this order: output, dead letter, parked."""
_PART = re.compile(r"([odp])([0-9]{1,6}):([0-9]{1,19})")
MAX_PARTS = 3 * 4096
MAX_OFFSET = 2**63 - 1  # Kafka offsets are int64: a larger one would break the topic reader


class CursorError(ValueError):
    """An id that is no position of this gateway's."""


def encode(positions: dict[TP, int], topics: list[str]) -> str:
    """The id of `positions` (topic and partition -> next offset) over `topics`, the
    topology's output, dead-letter and parked topics in that order."""
    parts = []
    for (topic, partition), offset in sorted(positions.items()):
        if topic in topics:
            parts.append(f"{ROLES[topics.index(topic)]}{partition}:{offset}")
    return ",".join(sorted(parts, key=_order))


def _order(part: str) -> tuple[int, int]:
    role, rest = part[0], part[1:]
    return ROLES.index(role), int(rest.split(":")[0])


def decode(text: str, topics: list[str]) -> dict[TP, int]:
    """The positions an id names; CursorError when it is not one."""
    if not text:
        return {}
    pieces = text.split(",")
    if len(pieces) > MAX_PARTS:
        raise CursorError("the id names too many partitions")
    positions: dict[TP, int] = {}
    for piece in pieces:
        match = _PART.fullmatch(piece)
        if match is None:
            raise CursorError(f"not a stream id: {text[:80]!r}")
        role, partition, offset = match.group(1), int(match.group(2)), int(match.group(3))
        if offset > MAX_OFFSET:
            raise CursorError(f"offset {offset} is beyond any Kafka offset")
        if offset:  # a partition at 0 is where an unnamed one starts: kept out of later ids
            positions[(topics[ROLES.index(role)], partition)] = offset
    return positions
