"""The exported event JSON Schema and the worker's parser give the same verdict on every event.

Each case is raw bytes as a producer would publish them. The schema side reads them as a
producer in another language would: strict UTF-8, then JSON, then the schema file with format
checks on. The worker side is `parse_event`. Both must agree, and agree with the expectation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from llmflow.schemas.events import INLINE_IMAGE_MAX_CHARS, TEXT_MAX_CHARS, parse_event
from llmflow.schemas.export import JSON_DIR

SCHEMA = json.loads((JSON_DIR / "event.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)

TEXT: dict[str, Any] = {
    "id": "e-1",
    "kind": "text",
    "key": "C-1001",
    "timestamp": "2026-01-02T03:04:05Z",
    "source": "helpdesk",
    "text": "My invoice is wrong",
}
URL = {"url": "https://cdn.example.com/a.jpg"}
INLINE = {"data_base64": "iVBORw0KGgo=", "media_type": "image/png"}
IMAGE: dict[str, Any] = {k: v for k, v in TEXT.items() if k != "text"} | {
    "kind": "image",
    "image": URL,
}
TEXT_IMAGE: dict[str, Any] = {**TEXT, "kind": "text_image", "images": [URL]}
BASES = {"text": TEXT, "image": IMAGE, "text_image": TEXT_IMAGE}


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is no JSON number")


def schema_accepts(raw: bytes) -> bool:
    try:  # RFC 8259 JSON: Python's json module would also read NaN and Infinity
        document = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return VALIDATOR.is_valid(document)


def parser_accepts(raw: bytes) -> bool:
    try:
        parse_event(raw)
    except ValidationError:
        return False
    return True


def raw(document: object) -> bytes:
    return json.dumps(document).encode()


def ts(value: object) -> bytes:
    return raw({**TEXT, "timestamp": value})


def image(ref: object) -> bytes:
    return raw({**IMAGE, "image": ref})


def text_with(text: str) -> bytes:
    # Escapes written by hand: json.dumps cannot write a lone surrogate on purpose.
    body = json.dumps({**TEXT, "text": "PLACEHOLDER"})
    return body.replace('"PLACEHOLDER"', text).encode()


def then(document: dict[str, Any], member: bytes) -> bytes:
    """`document` with one more member written last, e.g. a duplicate key."""
    return raw(document)[:-1] + b", " + member + b"}"


def without(base: dict[str, Any], field: str) -> bytes:
    return raw({k: v for k, v in base.items() if k != field})


VALID: dict[str, bytes] = {
    "text-minimal": raw(TEXT),
    "text-every-field": raw(
        {**TEXT, "schema_version": 1, "tenant": "acme", "attributes": {"lang": "en", "": ""}}
    ),
    "image-https": raw(IMAGE),
    "image-http": image({"url": "http://cdn.example.com/a.jpg"}),
    "image-file": image({"url": "file:///srv/images/a.jpg"}),
    "image-inline-with-media-type": image(INLINE),
    "image-media-type-with-plus": image({**URL, "media_type": "image/svg+xml"}),
    "image-url-null-data-set": image({"url": None, "data_base64": "AAAA"}),
    "image-data-null-url-set": image({**URL, "data_base64": None, "media_type": None}),
    "text-image-one": raw(TEXT_IMAGE),
    "text-image-four-mixed": raw({**TEXT_IMAGE, "images": [URL, INLINE, URL, INLINE]}),
    "tenant-null": raw({**TEXT, "tenant": None}),
    "tenant-empty": raw({**TEXT, "tenant": ""}),
    "schema-version-1.0": then(TEXT, b'"schema_version": 1.0'),
    "schema-version-1e0": then(TEXT, b'"schema_version": 1e0'),
    "schema-version-rounds-to-1": then(TEXT, b'"schema_version": 1.0000000000000001'),
    "escapes-in-key-and-kind": raw(TEXT).replace(b'"kind": "text"', b'"\\u006bind": "te\\u0078t"'),
    "escaped-slashes-in-url": raw(IMAGE).replace(b"https://", b"https:\\/\\/"),
    "id-128-chars": raw({**TEXT, "id": "i" * 128}),
    "id-128-astral-chars": raw({**TEXT, "id": "\U0001f600" * 128}),
    "text-at-limit": raw({**TEXT, "text": "t" * TEXT_MAX_CHARS}),
    "text-surrogate-pair": text_with('"\\ud83d\\ude00"'),
    "text-nul-escape": text_with('"a\\u0000b"'),
    "text-raw-utf8": json.dumps({**TEXT, "text": "Grüße, 東京"}, ensure_ascii=False).encode(),
    "inline-at-limit": image({"data_base64": "A" * INLINE_IMAGE_MAX_CHARS}),
    "duplicate-key-last-valid": then({**TEXT, "text": ""}, b'"text": "x"'),
    "whitespace-around": b" \n\t" + raw(TEXT) + b"\r\n ",
    "ts-offset": ts("2026-01-02T03:04:05+05:30"),
    "ts-negative-zero-offset": ts("2026-01-02T03:04:05-00:00"),
    "ts-lowercase-t-z": ts("2026-01-02t03:04:05z"),
    "ts-nanoseconds": ts("2026-01-02T03:04:05.123456789Z"),
    "ts-one-fraction-digit": ts("2026-01-02T03:04:05.5+01:00"),
    "ts-largest-offset": ts("2026-01-02T03:04:05+23:59"),
    "ts-leap-day": ts("2024-02-29T00:00:00Z"),
    "ts-year-1": ts("0001-01-01T00:00:00Z"),
    "ts-year-1-ahead-of-utc": ts("0001-01-01T00:00:00+23:59"),
    "ts-year-9999-behind-utc": ts("9999-12-31T23:59:59-23:59"),
    "ts-1000-fraction-digits": ts("2026-01-02T03:04:05." + "1" * 1000 + "Z"),
    # Accepted by the contract; the worker's image stage turns it into a dead letter.
    "image-data-empty": image({"data_base64": ""}),
}

INVALID: dict[str, bytes] = {
    # kind
    **{f"{kind}-missing-kind": without(base, "kind") for kind, base in BASES.items()},
    "kind-unknown": raw({**TEXT, "kind": "audio"}),
    "kind-wrong-case": raw({**TEXT, "kind": "Text"}),
    "kind-empty": raw({**TEXT, "kind": ""}),
    "kind-number": raw({**TEXT, "kind": 1}),
    "kind-true": raw({**TEXT, "kind": True}),
    "kind-null": raw({**TEXT, "kind": None}),
    "kind-list": raw({**TEXT, "kind": ["text"]}),
    "kind-trailing-space": raw({**TEXT, "kind": "text "}),
    "kind-trailing-nul": raw({**TEXT, "kind": "text\x00"}),
    "kind-image-with-text-fields": raw({**TEXT, "kind": "image"}),
    "kind-text-with-image-fields": raw({**IMAGE, "kind": "text"}),
    "kind-duplicate-last-wins": then(TEXT, b'"kind": "image"'),
    # every required field missing in turn
    **{
        f"{kind}-missing-{field}": without(base, field)
        for kind, base in BASES.items()
        for field in base
        if field != "kind"
    },
    # wrong types
    "id-number": raw({**TEXT, "id": 123}),
    "key-float": raw({**TEXT, "key": 1.5}),
    "source-true": raw({**TEXT, "source": True}),
    "text-list": raw({**TEXT, "text": ["x"]}),
    "tenant-number": raw({**TEXT, "tenant": 5}),
    "id-null": raw({**TEXT, "id": None}),
    "attributes-list": raw({**TEXT, "attributes": []}),
    "attributes-null": raw({**TEXT, "attributes": None}),
    "attributes-number-value": raw({**TEXT, "attributes": {"n": 1}}),
    "attributes-null-value": raw({**TEXT, "attributes": {"n": None}}),
    "attributes-object-value": raw({**TEXT, "attributes": {"n": {"m": "x"}}}),
    "image-as-string": raw({**IMAGE, "image": URL["url"]}),
    "images-as-object": raw({**TEXT_IMAGE, "images": URL}),
    "images-with-string": raw({**TEXT_IMAGE, "images": [URL["url"]]}),
    "attribute-nested-300-deep": then(
        TEXT, b'"attributes": {"a": ' + b"[" * 300 + b"]" * 300 + b"}"
    ),
    # schema_version
    "schema-version-2": raw({**TEXT, "schema_version": 2}),
    "schema-version-0": raw({**TEXT, "schema_version": 0}),
    "schema-version-true": raw({**TEXT, "schema_version": True}),
    "schema-version-string": raw({**TEXT, "schema_version": "1"}),
    "schema-version-null": raw({**TEXT, "schema_version": None}),
    "schema-version-1.5": raw({**TEXT, "schema_version": 1.5}),
    "schema-version-nan": then(TEXT, b'"schema_version": NaN'),
    "schema-version-huge": raw({**TEXT, "schema_version": 10**400}),
    # timestamp
    "ts-unix-int": ts(1767323045),
    "ts-unix-float": ts(1767323045.5),
    "ts-unix-string": ts("1767323045"),
    "ts-true": ts(True),
    "ts-null": ts(None),
    "ts-empty": ts(""),
    "ts-number-beyond-float": raw(TEXT).replace(b'"2026-01-02T03:04:05Z"', b"1e400"),
    "ts-naive": ts("2026-01-02T03:04:05"),
    "ts-date-only": ts("2026-01-02"),
    "ts-space-for-t": ts("2026-01-02 03:04:05Z"),
    "ts-offset-without-colon": ts("2026-01-02T03:04:05+0100"),
    "ts-offset-hours-only": ts("2026-01-02T03:04:05+01"),
    "ts-no-seconds": ts("2026-01-02T03:04Z"),
    "ts-comma-fraction": ts("2026-01-02T03:04:05,5Z"),
    "ts-empty-fraction": ts("2026-01-02T03:04:05.Z"),
    "ts-hour-24": ts("2026-01-02T24:00:00Z"),
    "ts-leap-second": ts("2016-12-31T23:59:60Z"),
    "ts-february-30": ts("2026-02-30T00:00:00Z"),
    "ts-year-0": ts("0000-01-01T00:00:00Z"),
    "ts-offset-24h": ts("2026-01-02T03:04:05+24:00"),
    "ts-zone-name": ts("2026-01-02T03:04:05UTC"),
    "ts-trailing-newline": ts("2026-01-02T03:04:05Z\n"),
    "ts-leading-space": ts(" 2026-01-02T03:04:05Z"),
    "ts-basic-format": ts("20260102T030405Z"),
    "ts-unpadded": ts("2026-1-2T03:04:05Z"),
    "ts-arabic-indic-digits": ts("\u0662\u0660\u0662\u0666-01-02T03:04:05Z"),
    # empty and over-long strings
    "id-empty": raw({**TEXT, "id": ""}),
    "key-empty": raw({**TEXT, "key": ""}),
    "source-empty": raw({**TEXT, "source": ""}),
    "text-empty": raw({**TEXT, "text": ""}),
    "id-129-chars": raw({**TEXT, "id": "i" * 129}),
    "id-129-astral-chars": raw({**TEXT, "id": "\U0001f600" * 129}),
    "key-257-chars": raw({**TEXT, "key": "k" * 257}),
    "source-257-chars": raw({**TEXT, "source": "s" * 257}),
    "tenant-129-chars": raw({**TEXT, "tenant": "t" * 129}),
    "text-32001-chars": raw({**TEXT, "text": "t" * (TEXT_MAX_CHARS + 1)}),
    "url-4097-chars": image({"url": "https://h/" + "a" * 4087}),
    "inline-over-limit": image({"data_base64": "A" * (INLINE_IMAGE_MAX_CHARS + 1)}),
    # extra fields
    "extra-field": raw({**TEXT, "surprise": 1}),
    "extra-field-null": raw({**TEXT, "surprise": None}),
    "extra-field-dollar-schema": raw({**TEXT, "$schema": "urn:llmflow:schema:event"}),
    "text-field-on-image-event": raw({**IMAGE, "text": "hello"}),
    "image-ref-extra-field": image({**URL, "alt": "a cat"}),
    # image references
    "image-ref-empty": image({}),
    "image-ref-both": image({**URL, "data_base64": "AAAA"}),
    "image-ref-both-null": image({"url": None, "data_base64": None}),
    "image-ref-url-null-only": image({"url": None}),
    "image-ref-media-type-only": image({"media_type": "image/png"}),
    "image-ref-url-number": image({"url": 5}),
    "image-ref-null": raw({**IMAGE, "image": None}),
    "url-ftp": image({"url": "ftp://host/a.jpg"}),
    "url-uppercase-scheme": image({"url": "HTTPS://host/a.jpg"}),
    "url-scheme-relative": image({"url": "//host/a.jpg"}),
    "url-empty": image({"url": ""}),
    "url-leading-space": image({"url": " https://host/a.jpg"}),
    "media-type-trailing-newline": image({**URL, "media_type": "image/png\n"}),
    "media-type-uppercase": image({**URL, "media_type": "IMAGE/PNG"}),
    "media-type-not-image": image({**URL, "media_type": "text/plain"}),
    "media-type-empty": image({**URL, "media_type": ""}),
    "images-0": raw({**TEXT_IMAGE, "images": []}),
    "images-5": raw({**TEXT_IMAGE, "images": [URL] * 5}),
    "images-one-bad": raw({**TEXT_IMAGE, "images": [URL, {}]}),
    # lone surrogates: escapes that name no Unicode character
    "text-lone-high-surrogate": text_with('"\\ud800"'),
    "text-lone-low-surrogate": text_with('"a\\udc00b"'),
    "text-reversed-surrogate-pair": text_with('"\\ude00\\ud83d"'),
    "id-lone-surrogate": raw(TEXT).replace(b'"e-1"', b'"e-\\ud800"'),
    "attribute-key-lone-surrogate": then(TEXT, b'"attributes": {"\\ud800": "v"}'),
    "attribute-value-lone-surrogate": then(TEXT, b'"attributes": {"k": "\\udfff"}'),
    "url-lone-surrogate": raw(IMAGE).replace(b"a.jpg", b"\\ud800.jpg"),
    # duplicate keys: the last one counts on both sides
    "duplicate-key-last-invalid": then(TEXT, b'"text": ""'),
    "duplicate-id-last-empty": then(TEXT, b'"id": ""'),
    # not an object
    "array": raw([TEXT]),
    "string": raw("text"),
    "null": b"null",
    "number": b"1",
    "true": b"true",
    "empty-object": b"{}",
    "empty-bytes": b"",
    "whitespace-only": b" \n",
    "nested-past-recursion-limit": b"[" * 100_000 + b"]" * 100_000,
    # not JSON, not UTF-8
    "truncated": raw(TEXT)[:-5],
    "trailing-garbage": raw(TEXT) + b" x",
    "two-documents": raw(TEXT) + raw(TEXT),
    "single-quotes": raw(TEXT).replace(b'"', b"'"),
    "trailing-comma": raw(TEXT)[:-1] + b", }",
    "comment": b"// event\n" + raw(TEXT),
    "raw-newline-in-string": raw(TEXT).replace(b"My invoice", b"My\ninvoice"),
    "latin-1-bytes": json.dumps({**TEXT, "text": "Grüße"}, ensure_ascii=False).encode("latin-1"),
    "invalid-utf8-byte": raw(TEXT).replace(b"invoice", b"inv\xffoice"),
    "overlong-utf8": raw(TEXT).replace(b"invoice", b"inv\xc0\xafoice"),
    "cesu8-surrogate-bytes": raw(TEXT).replace(b"invoice", b"inv\xed\xa0\x80oice"),
    "utf8-byte-order-mark": b"\xef\xbb\xbf" + raw(TEXT),
    "utf16": json.dumps(TEXT).encode("utf-16"),
    "utf32": json.dumps(TEXT).encode("utf-32"),
}


def test_corpus_is_broad_and_valid_cases_are_what_they_claim() -> None:
    assert len(VALID) + len(INVALID) >= 60
    assert not VALID.keys() & INVALID.keys()
    # A case is only adversarial if it is still JSON when it should be: spot-check the
    # hand-edited ones that must reach the validators rather than fail as bytes.
    for name in ("duplicate-key-last-invalid", "kind-duplicate-last-wins", "id-lone-surrogate"):
        json.loads(INVALID[name])


def test_format_checks_really_run() -> None:
    # `format: date-time` is silently skipped unless rfc3339-validator is installed.
    checker = Draft202012Validator.FORMAT_CHECKER
    assert not checker.conforms("2026-01-02", "date-time")
    assert checker.conforms("2026-01-02T03:04:05Z", "date-time")


@pytest.mark.parametrize("body", VALID.values(), ids=VALID.keys())
def test_both_accept(body: bytes) -> None:
    assert (schema_accepts(body), parser_accepts(body)) == (True, True)


@pytest.mark.parametrize("body", INVALID.values(), ids=INVALID.keys())
def test_both_reject(body: bytes) -> None:
    assert (schema_accepts(body), parser_accepts(body)) == (False, False)
