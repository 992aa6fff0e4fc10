"""`dev.bench.writes` counts the PRODUCE requests of the broker's request log by client, and
sorts the topics a worker wrote into output and tables."""

from __future__ import annotations

from pathlib import Path

from dev.bench.harness import TopologyCopy
from dev.bench.writes import CASES, kind_of, produce_requests, table

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


def test_the_table_shows_medians_over_rounds_and_each_rounds_requests() -> None:
    def run(code: str, records: dict[str, int], requests: int) -> dict[str, object]:
        return {
            "code": code,
            "case": "1 call/event",
            "events_in_flight": 200,
            "events": 100,
            "records": records,
            "records_per_event": sum(records.values()) / 100,
            "produce_requests_per_event": requests / 100,
        }

    rows = table(
        [
            run("before", {"output": 100, "answered": 200, "paid": 200, "spend": 100}, 60),
            run("after", {"output": 100, "answered": 90, "paid": 200, "spend": 10}, 40),
            run("after", {"output": 100, "answered": 80, "paid": 200, "spend": 12}, 30),
            run("before", {"output": 100, "answered": 190, "paid": 200, "spend": 100}, 40),
            run("after", {"output": 100, "answered": 70, "paid": 200, "spend": 14}, 50),
            run("before", {"output": 100, "answered": 180, "paid": 200, "spend": 100}, 50),
        ]
    ).splitlines()
    assert rows[2] == (
        "| before | 1 call/event (200 in flight) | 100 | 5.90 | 1.00 | 1.90 | 2.00 | 1.00 "
        "| 0.500 (0.600, 0.400, 0.500) |"
    )
    assert rows[3] == (
        "| after | 1 call/event (200 in flight) | 100 | 3.92 | 1.00 | 0.80 | 2.00 | 0.12 "
        "| 0.400 (0.400, 0.300, 0.500) |"
    )
