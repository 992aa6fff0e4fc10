from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError
from referencing import Registry, Resource

from llmflow import schemas
from llmflow.schemas.events import (
    INLINE_IMAGE_MAX_CHARS,
    AnyEvent,
    ImageEvent,
    TextEvent,
    TextImageEvent,
    parse_event,
)
from llmflow.schemas.export import DIALECT, JSON_DIR, render, schema_documents
from llmflow.services.sdk.events import image_event, text_event, text_image_event

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


def _files() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in JSON_DIR.glob("*.json")}


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_every_file_names_its_dialect_and_a_stable_id_and_its_refs_resolve() -> None:
    files = _files()
    assert sorted(files) == sorted(schema_documents())
    ids = {name: document["$id"] for name, document in files.items()}
    assert len(set(ids.values())) == len(ids)
    for name, document in files.items():
        assert document["$schema"] == DIALECT
        assert ids[name] == "urn:llmflow:schema:" + name.removesuffix(".schema.json")
        Draft202012Validator.check_schema(document)
        # The `$id` becomes the base URI: `#/$defs/...` must still resolve against it.
        resolver = Registry().with_resource(ids[name], Resource.from_contents(document)).resolver()
        for ref in set(_refs(document)):
            assert ref.startswith("#/$defs/")
            assert resolver.lookup(ids[name] + ref).contents, f"{name}: {ref}"


def test_kind_is_required_on_both_sides() -> None:
    for variant in ("TextEvent", "ImageEvent", "TextImageEvent"):
        definition = _files()["event.schema.json"]["$defs"][variant]
        assert (
            "kind" in definition["required"] and "default" not in definition["properties"]["kind"]
        )
    with pytest.raises(ValidationError, match="kind"):
        TextEvent.model_validate({k: v for k, v in EVENT.items() if k != "kind"})
    with pytest.raises(ValidationError) as info:
        parse_event(json.dumps({k: v for k, v in EVENT.items() if k != "kind"}).encode())
    assert info.value.errors()[0]["type"] == "union_tag_not_found"


def test_image_ref_schema_says_exactly_one_source() -> None:
    image_ref = _files()["event.schema.json"]["$defs"]["ImageRef"]
    assert [branch["required"] for branch in image_ref["oneOf"]] == [["url"], ["data_base64"]]


def test_sdk_builders_name_the_kind(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    built: list[AnyEvent] = [
        text_event("hello", key="C-1"),
        image_event("https://cdn.example.com/a.jpg", key="P-1"),
        text_image_event("hello", [photo, "https://cdn.example.com/b.jpg"], key="P-1"),
    ]
    assert [event.kind for event in built] == ["text", "image", "text_image"]
    for event in built:
        raw = event.model_dump_json().encode()
        assert parse_event(raw) == event
    assert isinstance(built[2], TextImageEvent) and built[2].images[0].data_base64


def test_results_say_what_they_are() -> None:
    for name, record_type in [
        ("output.schema.json", "output"),
        ("dead_letter.schema.json", "dead_letter"),
        ("parked.schema.json", "parked"),
    ]:
        document = _files()[name]
        assert document["properties"]["record_type"]["const"] == record_type
        # Outputs 4: the calls a condition skipped. Dead letters 4: stage `retrieve`. Parked
        # events 3: the original may be left out, its hash and size never are.
        version = {"output": 4, "dead_letter": 4, "parked": 3}[record_type]
        assert document["properties"]["schema_version"]["const"] == version
        # What the worker always writes is required, defaults included.
        assert set(document["required"]) == set(document["properties"]), name
    result = _files()["result.schema.json"]
    assert result["discriminator"]["propertyName"] == "record_type"
    assert len(result["oneOf"]) == 3


def _contracts() -> Iterator[type[BaseModel]]:
    for name in schemas.__all__:
        value = getattr(schemas, name)
        if isinstance(value, type) and issubclass(value, BaseModel):
            yield value


def test_every_contract_field_is_documented() -> None:
    undocumented = [
        f"{model.__name__}.{field}"
        for model in _contracts()
        for field, info in model.model_fields.items()
        if not info.description
    ]
    assert undocumented == []
