"""`dev.bench.writes` counts the PRODUCE requests of the broker's request log by client, and
sorts the topics a worker wrote into output and tables."""

from __future__ import annotations

from pathlib import Path

from dev.bench.harness import TopologyCopy
from dev.bench.writes import CASES, kind_of, produce_requests

PRODUCE = (
    'Completed request:{"isForwarded":false,"requestHeader":{"requestApiKey":0,'
    '"requestApiVersion":9,"correlationId":7,"clientId":"%s","requestApiKeyName":"PRODUCE"},'
    '"request":{"acks":-1,"topicData":[]}}\n'
)
FETCH = (
    'Completed request:{"isForwarded":false,"requestHeader":{"requestApiKey":1,'
    '"requestApiVersion":13,"correlationId":8,"clientId":"faust-0.15.3",'
    '"requestApiKeyName":"FETCH"},"request":{}}\n'
)


def test_produce_requests_are_counted_by_client_from_a_mark(tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    earlier = PRODUCE % "aiokafka-0.14.0"
    log.write_text(earlier + PRODUCE % "faust-0.15.3" + FETCH + PRODUCE % "faust-0.15.3")
    assert produce_requests(log, 0) == {"aiokafka-0.14.0": 1, "faust-0.15.3": 2}
    assert produce_requests(log, len(earlier)) == {"faust-0.15.3": 2}


def test_topics_are_sorted_into_output_and_tables() -> None:
    topology = TopologyCopy(
        path=Path("t.yaml"),
        name="support_triage",
        input_topic="in",
        output_topic="out",
        dead_letter_topic="dlq",
        parked_topic="parked",
        calls=("summarize",),
    )
    kinds = {
        topic: kind_of(topic, topology, "app")
        for topic in ("out", "dlq", "app-support_triage-paid-changelog", "other-topic")
    }
    assert kinds == {
        "out": "output",
        "dlq": "dead letters/parked",
        "app-support_triage-paid-changelog": "paid",
        "other-topic": "other",
    }


def test_the_cases_keep_200_calls_in_flight() -> None:
    assert [(len(c.calls), c.events_in_flight) for c in CASES] == [(1, 200), (3, 67)]
