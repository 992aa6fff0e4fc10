from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from llmflow import schemas
from llmflow.schemas.events import INLINE_IMAGE_MAX_CHARS, ImageEvent, TextEvent, parse_event
from llmflow.schemas.export import JSON_DIR, render, schema_documents

EVENT = {
    "id": "e-1",
    "kind": "text",
    "key": "C-1001",
    "timestamp": "2026-01-02T03:04:05Z",
    "source": "helpdesk",
    "text": "My invoice is wrong",
}


def test_json_schema_files_match_the_models() -> None:
    for name, document in schema_documents().items():
        path = JSON_DIR / name
        assert path.exists(), f"{path} missing: run `llmflow schemas export`"
        assert path.read_text() == render(document), f"{name} drifted: run `llmflow schemas export`"


def test_public_surface() -> None:
    assert sorted(schemas.__all__) == sorted(
        [
            "DeadLetter",
            "Event",
            "ImageEvent",
            "ImageInfo",
            "ImageRef",
            "ModelCallResult",
            "OrgRecordRef",
            "Output",
            "Parked",
            "Stage",
            "TextEvent",
            "TextImageEvent",
            "Totals",
            "parse_event",
        ]
    )


def test_text_event_parses_with_defaults() -> None:
    event = parse_event(json.dumps(EVENT).encode())
    assert isinstance(event, TextEvent)
    assert event.schema_version == 1 and event.tenant is None and event.attributes == {}


def test_kind_selects_the_contract() -> None:
    body = {**EVENT, "kind": "image", "image": {"url": "https://example.com/a.jpg"}}
    body.pop("text")
    assert isinstance(parse_event(json.dumps(body).encode()), ImageEvent)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"text": ""}, "text"),
        ({"timestamp": "2026-01-02T03:04:05"}, "timestamp"),  # no time zone
        ({"kind": "audio"}, "kind"),
        ({"surprise": 1}, "surprise"),
        ({"schema_version": 2}, "schema_version"),
    ],
)
def test_contract_violations_name_the_field(change: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps({**EVENT, **change}).encode())
    assert where in str(info.value)


def test_image_needs_exactly_one_source() -> None:
    base = {k: v for k, v in EVENT.items() if k != "text"} | {"kind": "image"}
    for image in ({}, {"url": "file:///a.jpg", "data_base64": "AAAA"}):
        with pytest.raises(ValidationError, match="exactly one"):
            parse_event(json.dumps({**base, "image": image}).encode())


def test_inline_images_are_capped_and_urls_restricted() -> None:
    base = {k: v for k, v in EVENT.items() if k != "text"} | {"kind": "image"}
    too_big = {"data_base64": "A" * (INLINE_IMAGE_MAX_CHARS + 4)}
    with pytest.raises(ValidationError, match="data_base64"):
        parse_event(json.dumps({**base, "image": too_big}).encode())
    with pytest.raises(ValidationError, match="url"):
        parse_event(json.dumps({**base, "image": {"url": "ftp://host/a.jpg"}}).encode())


def test_not_json_is_reported_as_json_invalid() -> None:
    with pytest.raises(ValidationError) as info:
        parse_event(b"{nope")
    assert info.value.errors()[0]["type"] == "json_invalid"


def test_schema_files_are_valid_json(project_root: Path) -> None:
    for path in (project_root / "schemas" / "json").glob("*.json"):
        assert json.loads(path.read_text())["title"]
