"""Build valid events in a line of code."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from pathlib import Path

from llmflow.schemas.events import (
    INLINE_IMAGE_MAX_CHARS,
    ImageEvent,
    ImageRef,
    TextEvent,
    TextImageEvent,
)


def _common(key: str, source: str, tenant: str | None, event_id: str | None) -> dict[str, object]:
    return {
        "id": event_id or str(uuid.uuid4()),
        "key": key,
        "source": source,
        "tenant": tenant,
        "timestamp": datetime.now(UTC),
    }


def image_ref(image: str | Path, *, inline: bool | None = None) -> ImageRef:
    """A URL as is; a local file inline when small enough (or asked), else as a file:// URL."""
    if isinstance(image, str) and "://" in image:
        return ImageRef(url=image)
    path = Path(image).resolve()
    fits = path.stat().st_size * 4 / 3 + 4 <= INLINE_IMAGE_MAX_CHARS
    if inline is None:
        inline = fits
    if inline:
        return ImageRef(data_base64=base64.b64encode(path.read_bytes()).decode("ascii"))
    return ImageRef(url=path.as_uri())


def text_event(
    text: str,
    *,
    key: str,
    source: str = "sdk",
    tenant: str | None = None,
    event_id: str | None = None,
) -> TextEvent:
    fields = _common(key, source, tenant, event_id)
    return TextEvent.model_validate({**fields, "kind": "text", "text": text})


def image_event(
    image: str | Path,
    *,
    key: str,
    source: str = "sdk",
    tenant: str | None = None,
    event_id: str | None = None,
) -> ImageEvent:
    fields = _common(key, source, tenant, event_id)
    return ImageEvent.model_validate({**fields, "kind": "image", "image": image_ref(image)})


def text_image_event(
    text: str,
    images: list[str | Path],
    *,
    key: str,
    source: str = "sdk",
    tenant: str | None = None,
    event_id: str | None = None,
) -> TextImageEvent:
    fields = _common(key, source, tenant, event_id)
    refs = [image_ref(image) for image in images]
    return TextImageEvent.model_validate(
        {**fields, "kind": "text_image", "text": text, "images": refs}
    )
