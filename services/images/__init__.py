"""Image intake for vision models: fetch from an allowed source, then shrink and re-encode."""

from llmflow.services.images.fetch import decode_inline, load_image_bytes
from llmflow.services.images.prepare import (
    ImageError,
    ImageErrorKind,
    ImageLimits,
    PreparedImage,
    decode_only,
    prepare_image,
)

__all__ = [
    "ImageError",
    "ImageErrorKind",
    "ImageLimits",
    "PreparedImage",
    "decode_inline",
    "decode_only",
    "load_image_bytes",
    "prepare_image",
]
