"""What the worker writes validates against the exported result schemas, and the SDK's
`parse_result` and `result.schema.json` reject the same broken records."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from llmflow.schemas.dead_letter import DeadLetter
from llmflow.schemas.export import JSON_DIR
from llmflow.schemas.outputs import (
    ImageInfo,
    ModelCallResult,
    OrgRecordRef,
    Output,
    Retrieved,
    RetrievedPassage,
    SkippedCall,
    Totals,
)
from llmflow.schemas.parked import Parked
from llmflow.schemas.results import AnyResult
from llmflow.services.sdk.consumer import parse_result

AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
SOURCE: dict[str, Any] = {"source_topic": "tickets", "source_partition": 3, "source_offset": 42}


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((JSON_DIR / name).read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


RESULT = _validator("result.schema.json")
OWN = {
    "output": _validator("output.schema.json"),
    "dead_letter": _validator("dead_letter.schema.json"),
    "parked": _validator("parked.schema.json"),
}

CALL = ModelCallResult(
    name="classify",
    kind="chat",
    call_id="c" * 32,
    model="gpt-4o-mini",
    prompt_version="classify-3",
    answer={"category": "billing"},
    tokens_in=187,
    tokens_out=21,
    latency_ms=412.5,
)
QUERY_EMBEDDING = CALL.model_copy(
    update={"name": "retrieval", "kind": "embedding", "answer": [0.25, 0.5], "tokens_out": 0}
)
PASSAGE = RetrievedPassage(
    id="policies/POL-1#0", key="POL-1", n=0, version="cd" * 32, offset=7, score=0.0325
)
RETRIEVED = Retrieved(
    collection="policies",
    mode="hybrid",
    query="My invoice is wrong",
    embedding=QUERY_EMBEDDING,
    passages=[PASSAGE],
)
ORG_RECORD = OrgRecordRef(table="customers", key="C-1001", version="ab" * 32, offset=12)
OUTPUT = Output(
    event_id="e-1",
    event_key="C-1001",
    tenant="acme",
    topology="support_triage",
    topology_version="1.1.0",
    org_record=ORG_RECORD,
    retrieval=RETRIEVED,
    images=[
        ImageInfo(
            sha256="0" * 64, width=1024, height=768, original_width=4000, original_height=3000
        )
    ],
    calls=[CALL, CALL.model_copy(update={"name": "embed", "kind": "embedding", "answer": [0.5]})],
    skipped=[
        SkippedCall(name="escalate", when="calls.classify.answer.priority == 'urgent'"),
        SkippedCall(
            name="notify", when="calls.classify.answer.priority == 'urgent'", because="escalate"
        ),
    ],
    totals=Totals.of([CALL, QUERY_EMBEDDING], 430.0),
    worker="host:1",
    received_at=AT,
    produced_at=AT.astimezone(timezone(timedelta(hours=5, minutes=30))),
    **SOURCE,
)
BARE_OUTPUT = OUTPUT.model_copy(
    update={
        "tenant": None,
        "org_record": None,
        "retrieval": None,
        "images": [],
        "calls": [],
        "skipped": [],
        "received_at": AT,
    }
)
# Keyword retrieval embeds nothing; a record not found has no version and no offset.
KEYWORD_OUTPUT = OUTPUT.model_copy(
    update={
        "org_record": OrgRecordRef(table="customers", key="C-9999", version=None),
        "retrieval": RETRIEVED.model_copy(update={"mode": "keyword", "embedding": None}),
    }
)
DEAD_LETTER = DeadLetter(
    event_id=None,
    topology="support_triage",
    topology_version="1.1.0",
    stage="decode",
    error_kind="not_json",
    message="Invalid JSON",
    original_b64="e25vcGU=",
    original_sha256=hashlib.sha256(b"{nope").hexdigest(),
    original_size=5,
    failed_at=AT,
    **SOURCE,
)
# Too large to carry its original: the source offset names it.
BARE_DEAD_LETTER = DEAD_LETTER.model_copy(
    update={"original_b64": None, "stage": "image", "error_kind": "internal_error"}
)
RETRIEVE_DEAD_LETTER = DEAD_LETTER.model_copy(
    update={"event_id": "e-1", "stage": "retrieve", "error_kind": "search_failed"}
)
PARKED = Parked(
    event_id="e-2",
    tenant="acme",
    topology="support_triage",
    topology_version="1.0.0",
    reason="budget",
    message="over budget",
    period="2026-01-02",
    spent_usd=10.5,
    budget_usd=10.0,
    original_b64="e30=",
    original_sha256=hashlib.sha256(b"{}").hexdigest(),
    original_size=2,
    parked_at=AT,
    **SOURCE,
)
# Too large to carry its original: the source offset names it.
BARE_PARKED = PARKED.model_copy(update={"original_b64": None})
WRITTEN: dict[str, AnyResult] = {
    "output": OUTPUT,
    "output-bare": BARE_OUTPUT,
    "output-keyword-retrieval": KEYWORD_OUTPUT,
    "dead-letter": DEAD_LETTER,
    "dead-letter-bare": BARE_DEAD_LETTER,
    "dead-letter-retrieve": RETRIEVE_DEAD_LETTER,
    "parked": PARKED,
    "parked-bare": BARE_PARKED,
}


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is no JSON number")


def _accepts(validator: Draft202012Validator, raw: bytes) -> bool:
    try:  # RFC 8259 JSON: Python's json module would also read NaN and Infinity
        document = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except ValueError:
        return False
    return validator.is_valid(document)


def _parses(raw: bytes) -> bool:
    try:
        parse_result(raw)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("result", WRITTEN.values(), ids=WRITTEN.keys())
def test_written_results_match_their_schemas_and_read_back(result: AnyResult) -> None:
    raw = result.model_dump_json().encode()
    own = OWN[result.record_type]
    assert _accepts(RESULT, raw) and _accepts(own, raw)
    assert parse_result(raw) == result
    for record_type, other in OWN.items():
        assert _accepts(other, raw) == (record_type == result.record_type)


def _edit(result: AnyResult, **changes: Any) -> bytes:
    document = json.loads(result.model_dump_json())
    for field, value in changes.items():
        if value is _DROP:
            del document[field]
        else:
            document[field] = value
    return json.dumps(document).encode()


_DROP = object()
_RETRIEVED_JSON: dict[str, Any] = RETRIEVED.model_dump(mode="json")
_PASSAGE_JSON: dict[str, Any] = PASSAGE.model_dump(mode="json")

BROKEN: dict[str, bytes] = {
    "no-record-type": _edit(OUTPUT, record_type=_DROP),
    "unknown-record-type": _edit(OUTPUT, record_type="answer"),
    "record-type-null": _edit(DEAD_LETTER, record_type=None),
    "output-labelled-parked": _edit(OUTPUT, record_type="parked"),
    "dead-letter-labelled-output": _edit(DEAD_LETTER, record_type="output"),
    "schema-version-1": _edit(PARKED, schema_version=1),
    "schema-version-true": _edit(PARKED, schema_version=True),
    "version-1-output-without-record-type": _edit(OUTPUT, record_type=_DROP, schema_version=1),
    "unix-time": _edit(DEAD_LETTER, failed_at=1767323045),
    "naive-time": _edit(PARKED, parked_at="2026-01-02T03:04:05"),
    "space-for-t": _edit(OUTPUT, produced_at="2026-01-02 03:04:05Z"),
    "unknown-stage": _edit(DEAD_LETTER, stage="somewhere"),
    "dead-letter-without-event-id": _edit(DEAD_LETTER, event_id=_DROP),
    "extra-field": _edit(OUTPUT, surprise=1),
    "negative-tokens": _edit(OUTPUT, calls=[{**CALL.model_dump(mode="json"), "tokens_in": -1}]),
    "offset-as-string": _edit(PARKED, source_offset="42"),
    "offset-as-true": _edit(DEAD_LETTER, source_partition=True),
    "offset-fractional": _edit(DEAD_LETTER, source_offset=42.5),
    "spent-as-string": _edit(PARKED, spent_usd="10.5"),
    "spent-nan": _edit(PARKED, spent_usd=float("nan")),
    "latency-infinite": _edit(OUTPUT, totals={**OUTPUT.totals.model_dump(), "latency_ms": 1e400}),
    "reused-as-string": _edit(OUTPUT, calls=[{**CALL.model_dump(mode="json"), "reused": "yes"}]),
    "repaired-as-number": _edit(OUTPUT, calls=[{**CALL.model_dump(mode="json"), "repaired": 1}]),
    "dead-letter-without-sha256": _edit(DEAD_LETTER, original_sha256=_DROP),
    "dead-letter-sha256-uppercase": _edit(DEAD_LETTER, original_sha256="FC" * 32),
    "dead-letter-sha256-short": _edit(DEAD_LETTER, original_sha256="fc" * 31),
    "dead-letter-without-size": _edit(DEAD_LETTER, original_size=_DROP),
    "dead-letter-negative-size": _edit(DEAD_LETTER, original_size=-1),
    "dead-letter-size-as-string": _edit(DEAD_LETTER, original_size="6"),
    "dead-letter-without-original": _edit(DEAD_LETTER, original_b64=_DROP),
    "dead-letter-schema-version-2": _edit(DEAD_LETTER, schema_version=2),
    "dead-letter-schema-version-3": _edit(DEAD_LETTER, schema_version=3),
    "output-schema-version-2": _edit(OUTPUT, schema_version=2),
    "output-schema-version-3": _edit(OUTPUT, schema_version=3),
    "skipped-without-condition": _edit(OUTPUT, skipped=[{"name": "escalate"}]),
    "skipped-as-names": _edit(OUTPUT, skipped=["escalate"]),
    "org-record-offset-as-string": _edit(
        OUTPUT, org_record={**ORG_RECORD.model_dump(mode="json"), "offset": "12"}
    ),
    "retrieval-unknown-mode": _edit(OUTPUT, retrieval={**_RETRIEVED_JSON, "mode": "semantic"}),
    "retrieval-without-passages": _edit(
        OUTPUT, retrieval={k: v for k, v in _RETRIEVED_JSON.items() if k != "passages"}
    ),
    "passage-negative-n": _edit(
        OUTPUT, retrieval={**_RETRIEVED_JSON, "passages": [{**_PASSAGE_JSON, "n": -1}]}
    ),
    "passage-offset-as-string": _edit(
        OUTPUT, retrieval={**_RETRIEVED_JSON, "passages": [{**_PASSAGE_JSON, "offset": "7"}]}
    ),
    "passage-score-nan": _edit(
        OUTPUT,
        retrieval={**_RETRIEVED_JSON, "passages": [{**_PASSAGE_JSON, "score": float("nan")}]},
    ),
    "parked-without-sha256": _edit(PARKED, original_sha256=_DROP),
    "parked-sha256-uppercase": _edit(PARKED, original_sha256="FC" * 32),
    "parked-without-size": _edit(PARKED, original_size=_DROP),
    "parked-negative-size": _edit(PARKED, original_size=-1),
    "parked-without-original": _edit(PARKED, original_b64=_DROP),
    "parked-schema-version-2": _edit(PARKED, schema_version=2),
    "not-an-object": b"[]",
    "not-json": b"{nope",
}


# Edited by hand and still valid: JSON numbers are numbers whatever their spelling.
EDITED: dict[str, bytes] = {
    "offset-as-whole-float": _edit(DEAD_LETTER, source_offset=42.0),
    "spent-as-integer": _edit(PARKED, spent_usd=10),
    "event-id-null": _edit(DEAD_LETTER, event_id=None),
    "original-null": _edit(DEAD_LETTER, original_b64=None),
    "parked-original-null": _edit(PARKED, original_b64=None),
}


@pytest.mark.parametrize("raw", EDITED.values(), ids=EDITED.keys())
def test_edited_results_are_accepted_by_both(raw: bytes) -> None:
    assert (_accepts(RESULT, raw), _parses(raw)) == (True, True)


@pytest.mark.parametrize("raw", BROKEN.values(), ids=BROKEN.keys())
def test_broken_results_are_rejected_by_both(raw: bytes) -> None:
    assert (_accepts(RESULT, raw), _parses(raw)) == (False, False)


def test_the_record_type_picks_the_model() -> None:
    for result in WRITTEN.values():
        assert type(parse_result(result.model_dump_json().encode())) is type(result)
