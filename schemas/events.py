"""Input events: text, image, or both. Images travel by reference or small inline payloads."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, model_validator

SCHEMA_VERSION: Final = 1
# Inline images ride inside the Kafka record; anything larger goes by reference
# (claim check), so records stay far below the broker's message.max.bytes.
INLINE_IMAGE_MAX_CHARS = 512 * 1024
TEXT_MAX_CHARS = 32_000


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ImageRef(_Contract):
    """One image: exactly one of `url` or `data_base64`."""

    url: str | None = Field(default=None, pattern=r"^(file|https?)://", max_length=4096)
    """Where the worker fetches the image: `file://` (inside the worker's image root) or `http(s)://`."""
    data_base64: str | None = Field(default=None, max_length=INLINE_IMAGE_MAX_CHARS)
    """The encoded image bytes (JPEG, PNG, WebP or GIF), base64, for small images only."""
    media_type: str | None = Field(default=None, pattern=r"^image/[a-z0-9.+-]+$")
    """Optional hint such as `image/jpeg`; the worker trusts the bytes, not this field."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ImageRef:
        if (self.url is None) == (self.data_base64 is None):
            raise ValueError("an image needs exactly one of 'url' or 'data_base64'")
        return self


class _EventBase(_Contract):
    id: str = Field(min_length=1, max_length=128)
    """Unique id chosen by the producer; outputs and dead letters carry it back."""
    schema_version: Literal[1] = SCHEMA_VERSION
    """Contract version of this event."""
    key: str = Field(min_length=1, max_length=256)
    """Business key (customer id, product id); the Kafka record key and the org-data lookup key."""
    tenant: str | None = Field(default=None, max_length=128)
    """Owner of the event for accounting; defaults to nobody in particular."""
    timestamp: AwareDatetime
    """When the event happened upstream, with a time zone."""
    source: str = Field(min_length=1, max_length=256)
    """The system that produced the event, e.g. `helpdesk` or `catalog-uploader`."""
    attributes: dict[str, str] = Field(default_factory=dict)
    """Free-form string attributes, available to prompt templates as `event.attributes`."""


class TextEvent(_EventBase):
    """A piece of text to process, e.g. a support ticket."""

    kind: Literal["text"] = "text"
    text: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    """The text itself."""


class ImageEvent(_EventBase):
    """One image to process, e.g. a product photo."""

    kind: Literal["image"] = "image"
    image: ImageRef
    """The image."""


class TextImageEvent(_EventBase):
    """Text together with one to four images, e.g. a product listing."""

    kind: Literal["text_image"] = "text_image"
    text: str = Field(min_length=1, max_length=TEXT_MAX_CHARS)
    """The text itself."""
    images: list[ImageRef] = Field(min_length=1, max_length=4)
    """The images, in order."""


AnyEvent = TextEvent | ImageEvent | TextImageEvent
Event = Annotated[AnyEvent, Field(discriminator="kind")]
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def parse_event(raw: bytes) -> AnyEvent:
    """Validate raw JSON bytes into an event; raises pydantic.ValidationError."""
    return EVENT_ADAPTER.validate_json(raw)


def event_images(event: AnyEvent) -> list[ImageRef]:
    if isinstance(event, ImageEvent):
        return [event.image]
    if isinstance(event, TextImageEvent):
        return list(event.images)
    return []
