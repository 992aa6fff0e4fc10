"""Input events: text, image, or both. Images travel by reference or small inline payloads."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import Field, TypeAdapter, model_validator

from llmflow.schemas._base import (
    END,
    NUMBER,
    SCALAR_VALUES_PATTERN,
    Contract,
    Timestamp,
    UnicodeStr,
)

SCHEMA_VERSION: Final = 1
# Inline images ride inside the Kafka record; anything larger goes by reference
# (claim check), so records stay far below the broker's message.max.bytes.
INLINE_IMAGE_MAX_CHARS = 512 * 1024
TEXT_MAX_CHARS = 32_000
# Both patterns in the portable dialect of `_base`; the URL, like every string, holds no
# lone surrogates.
URL_PATTERN = r"^(file|https?)://[^\ud800-\udfff]*" + END
MEDIA_TYPE_PATTERN = r"^image/[a-z0-9.+-]+" + END

# The runtime rule of `_exactly_one_source` in JSON Schema: a null counts as absent.
_ONE_SOURCE: dict[str, Any] = {
    "oneOf": [
        {"required": ["url"], "properties": {"url": {"type": "string"}}},
        {"required": ["data_base64"], "properties": {"data_base64": {"type": "string"}}},
    ]
}


class ImageRef(Contract, json_schema_extra=_ONE_SOURCE):
    """One image: exactly one of `url` or `data_base64` (a null counts as absent)."""

    url: str | None = Field(default=None, pattern=URL_PATTERN, max_length=4096)
    """Where the worker fetches the image: `file://` (inside the worker's image root) or `http(s)://`."""
    data_base64: UnicodeStr | None = Field(default=None, max_length=INLINE_IMAGE_MAX_CHARS)
    """The encoded image bytes (JPEG, PNG, WebP or GIF), base64, for small images only."""
    media_type: str | None = Field(default=None, pattern=MEDIA_TYPE_PATTERN)
    """Optional hint such as `image/jpeg`; the worker trusts the bytes, not this field."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ImageRef:
        if (self.url is None) == (self.data_base64 is None):
            raise ValueError("an image needs exactly one of 'url' or 'data_base64'")
        return self


class _EventBase(Contract):
    id: UnicodeStr = Field(min_length=1, max_length=128)
    """Unique id chosen by the producer; outputs and dead letters carry it back."""
    schema_version: Annotated[Literal[1], NUMBER] = SCHEMA_VERSION
    """Contract version of this event."""
    key: UnicodeStr = Field(min_length=1, max_length=256)
    """Business key (customer id, product id); the Kafka record key and the org-data lookup key."""
    tenant: UnicodeStr | None = Field(default=None, max_length=128)
    """Owner of the event for accounting; defaults to nobody in particular."""
    timestamp: Timestamp
    """When the event happened upstream: an RFC 3339 date-time with a time zone."""
    source: UnicodeStr = Field(min_length=1, max_length=256)
    """The system that produced the event, e.g. `helpdesk` or `catalog-uploader`."""
    attributes: dict[str, UnicodeStr] = Field(
        default_factory=dict,
        json_schema_extra={"propertyNames": {"pattern": SCALAR_VALUES_PATTERN}},
    )
    """Free-form string attributes, available to prompt templates as `event.attributes`."""


class TextEvent(_EventBase):
    """A piece of text to process, e.g. a support ticket."""

    kind: Literal["text"]
    """Selects this contract; required, so a producer says what it sends."""
    text: UnicodeStr = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    """The text itself."""


class ImageEvent(_EventBase):
    """One image to process, e.g. a product photo."""

    kind: Literal["image"]
    """Selects this contract; required, so a producer says what it sends."""
    image: ImageRef
    """The image."""


class TextImageEvent(_EventBase):
    """Text together with one to four images, e.g. a product listing."""

    kind: Literal["text_image"]
    """Selects this contract; required, so a producer says what it sends."""
    text: UnicodeStr = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    """The text itself."""
    images: list[ImageRef] = Field(min_length=1, max_length=4)
    """The images, in order."""


AnyEvent = TextEvent | ImageEvent | TextImageEvent
Event = Annotated[AnyEvent, Field(discriminator="kind")]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def parse_event(raw: bytes) -> AnyEvent:
    """Validate raw JSON bytes (UTF-8, no byte order mark) into an event.

    Raises pydantic.ValidationError; bytes that are no JSON give the error type `json_invalid`.
    """
    return EVENT_ADAPTER.validate_json(raw)


def event_images(event: AnyEvent) -> list[ImageRef]:
    """The event's images, in order; none for a text event."""
    if isinstance(event, ImageEvent):
        return [event.image]
    if isinstance(event, TextImageEvent):
        return list(event.images)
    return []
