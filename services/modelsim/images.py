"""Image descriptions for SIMULATOR answers: size, mode and mean colour of data: URLs.

http(s) URLs are never fetched; they are echoed. Errors are `ValueError`s whose message is
fit for an HTTP 400 answer.
"""

import base64
import binascii
import io

from PIL import Image, ImageStat

# Decoding is CPU work on the event loop's behalf; refuse images far beyond what a vision
# model accepts rather than stall every other request.
MAX_PIXELS = 50_000_000


def _decode_data_url(url: str) -> bytes:
    header, comma, payload = url.removeprefix("data:").partition(",")
    if not comma or "base64" not in header.split(";")[1:]:
        raise ValueError("image data URL must look like data:<media type>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"image data URL is not valid base64: {exc}") from exc


def describe_image(url: str) -> str:
    """`[image {w}x{h} {mode} mean #rrggbb]` for a data: URL, `[image url {url}]` for http(s)."""
    if url.startswith(("http://", "https://")):
        return f"[image url {url}]"
    if not url.startswith("data:"):
        raise ValueError("image URL must be a data: URL or an http(s) URL")
    raw = _decode_data_url(url)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"image of {width}x{height} pixels is too large")
            mode = image.mode
            mean = ImageStat.Stat(image.convert("RGB")).mean
    except ValueError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, bomb errors...)
        raise ValueError(f"image data could not be decoded: {exc}") from exc
    red, green, blue = (min(255, max(0, round(channel))) for channel in mean[:3])
    return f"[image {width}x{height} {mode} mean #{red:02x}{green:02x}{blue:02x}]"
