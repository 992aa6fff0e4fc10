"""Turn untrusted encoded image bytes into a small, metadata-free JPEG or PNG for a model.

Everything here is synchronous and keeps no shared mutable state, so the worker can
call it from a thread pool; Pillow releases the GIL while decoding and resizing.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Literal

from PIL import Image, ImageCms, ImageOps

from llmflow.errors import ConfigError, LlmflowError

ImageErrorKind = Literal[
    "unreadable",
    "too_many_pixels",
    "too_large",
    "unsupported_format",
    "fetch_failed",
    "forbidden_source",
]

# EPS/PS opening can run Ghostscript on the input; it must never be reachable.
_NEVER_ALLOWED = frozenset({"EPS", "PS"})


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """What the pipeline accepts and how far it shrinks images."""

    max_pixels: int = 40_000_000
    max_side: int = 1024
    max_bytes: int = 20 * 1024 * 1024
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF")
    jpeg_quality: int = 85
    file_root: Path | None = None
    allow_private_hosts: bool = False
    fetch_timeout_s: float = 10

    def __post_init__(self) -> None:
        formats = tuple(f.upper() for f in self.formats)
        if banned := sorted(_NEVER_ALLOWED.intersection(formats)):
            raise ConfigError(f"image formats {banned} can never be allowed (they run Ghostscript)")
        for name in ("max_pixels", "max_side", "max_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ImageLimits.{name} must be positive")
        if not 1 <= self.jpeg_quality <= 95:
            raise ConfigError(f"ImageLimits.jpeg_quality must be 1..95, got {self.jpeg_quality}")
        object.__setattr__(self, "formats", formats)


class ImageError(LlmflowError):
    """An image was refused or could not be read; `kind` says why in one word."""

    def __init__(self, kind: ImageErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ImageErrorKind = kind

    def __reduce__(self) -> tuple[type[ImageError], tuple[ImageErrorKind, str]]:
        # The default reduce would call __init__ with the message only.
        return (type(self), (self.kind, str(self)))


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """Re-encoded image ready to send.

    Sizes are in display orientation (after EXIF rotation). `original_format` is
    Pillow's name, e.g. "MPO" for a multi-picture camera JPEG.
    """

    data: bytes = field(repr=False)
    mime: str
    width: int
    height: int
    original_width: int
    original_height: int
    original_format: str
    sha256: str

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def prepare_image(raw: bytes, limits: ImageLimits) -> PreparedImage:
    """Validate, decode, orient, downscale and re-encode `raw`; raise ImageError if refused."""
    check_byte_size(len(raw), limits)
    with _open(raw, limits) as img:
        original_format = img.format or "unknown"
        width, height = img.size
        _check_pixels(width, height, limits)
        try:
            out, swapped = decode_and_shrink(img, limits)
            data, mime = encode(out, limits)
        except Exception as exc:  # Pillow raises many unrelated types on bad input
            raise _unreadable(exc) from exc
    if swapped:
        width, height = height, width
    return PreparedImage(
        data=data,
        mime=mime,
        width=out.width,
        height=out.height,
        original_width=width,
        original_height=height,
        original_format=original_format,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def decode_only(raw: bytes, limits: ImageLimits | None = None) -> tuple[int, int]:
    """Open and fully decode `raw` under the same guards; returns the decoded size."""
    limits = limits or ImageLimits()
    check_byte_size(len(raw), limits)
    with _open(raw, limits) as img:
        _check_pixels(img.width, img.height, limits)
        try:
            img.load()
        except Exception as exc:
            raise _unreadable(exc) from exc
        return img.size


def sniff_format(raw: bytes) -> str | None:
    """Name the format from magic bytes, so disallowed formats get a precise error."""
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    if raw[4:8] == b"ftyp":
        return "AVIF" if raw[8:12] in (b"avif", b"avis") else "HEIF"
    for magic, name in _SIGNATURES:
        if raw.startswith(magic):
            return name
    return None


_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),  # DOS EPS binary header
    (b"%PDF", "PDF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"BM", "BMP"),
)


def check_byte_size(size: int, limits: ImageLimits, *, partial: bool = False) -> None:
    """Raise "too_large" past max_bytes; `partial` means reading stopped at max_bytes + 1."""
    if size > limits.max_bytes:
        what = f"more than {_amount(limits.max_bytes)}" if partial else _amount(size)
        raise ImageError("too_large", f"image is {what}, limit {_amount(limits.max_bytes)}")


def _amount(n: int) -> str:
    return f"{n:,} bytes" if n < 1_048_576 else f"{n / 1_048_576:.1f} MiB"


def _check_pixels(width: int, height: int, limits: ImageLimits) -> None:
    if width * height > limits.max_pixels:
        raise ImageError(
            "too_many_pixels",
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP, "
            f"limit {limits.max_pixels / 1e6:.1f} MP",
        )


def _unreadable(exc: BaseException) -> ImageError:
    return ImageError("unreadable", f"cannot decode image: {type(exc).__name__}: {exc}")


def _open(raw: bytes, limits: ImageLimits) -> Image.Image:
    """Read only the header, with Pillow restricted to the allowed format plugins."""
    sniffed = sniff_format(raw)
    if sniffed is not None and sniffed not in limits.formats:
        raise ImageError(
            "unsupported_format",
            f"image format {sniffed} is not allowed (allowed: {', '.join(limits.formats)})",
        )
    try:
        return Image.open(BytesIO(raw), formats=limits.formats)
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (2x its MAX_IMAGE_PIXELS) only fires if ours is set higher.
        raise ImageError("too_many_pixels", f"image header refused by Pillow: {exc}") from exc
    except Exception as exc:
        raise _unreadable(exc) from exc


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Size with the longer side at `max_side`, aspect ratio kept (never upscaled)."""
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


# An integer shrink factor is taken when it lands within this share of `max_side`.
NEAR_ENOUGH = 0.9


def shrink_target(size: tuple[int, int], max_side: int) -> tuple[tuple[int, int], int]:
    """(output size, integer factor or 0). Shrinking by a whole factor k costs a fraction
    of a LANCZOS resize (JPEG DCT scaling or box averaging), so it is used whenever the
    result stays within 10% of `max_side`: a 2000 px photo becomes 1000 px, not 1024 px."""
    w, h = size
    longest = max(w, h)
    if longest <= max_side:
        return size, 1
    k = -(-longest // max_side)  # ceil
    if longest / k >= NEAR_ENOUGH * max_side:
        return (-(-w // k), -(-h // k)), k  # Image.reduce rounds up
    return _fit(size, max_side), 0


def decode_and_shrink(img: Image.Image, limits: ImageLimits) -> tuple[Image.Image, bool]:
    """Decode the first frame, apply EXIF orientation and shrink; True if it was rotated."""
    target, factor = shrink_target(img.size, limits.max_side)
    if factor != 1:
        # JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale, still >= the target size.
        img.draft("RGB", target)
    icc = img.info.get("icc_profile")
    decoded_size = img.size
    ImageOps.exif_transpose(img, in_place=True)  # loads the first frame only
    swapped = img.size != decoded_size
    if swapped:
        target = (target[1], target[0])

    out = _normalise_mode(img, keep_cmyk=bool(icc))
    if out.size != target:
        remaining = out.width // target[0] if factor else 0
        if remaining > 1 and -(-out.width // remaining) == target[0]:
            out = out.reduce(remaining)  # box average: what is left of the whole factor
        else:
            out = out.resize(target, Image.Resampling.LANCZOS)
    if isinstance(icc, bytes) and icc:
        out = _to_srgb(out, icc)
    if out.mode == "CMYK":
        out = out.convert("RGB")
    if out.mode == "RGBA" and _fully_opaque(out):
        out = out.convert("RGB")
    return out, swapped


def _normalise_mode(img: Image.Image, *, keep_cmyk: bool) -> Image.Image:
    """RGB, RGBA (when there is any alpha) or CMYK (when a profile will convert it)."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return img.convert("RGBA")
    if img.mode == "CMYK" and keep_cmyk:
        return img
    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit greyscale PNG: a plain convert would clip everything above 255 to white.
        return img.convert("I").point(lambda v: v / 256).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    """Convert to sRGB, since the profile is dropped on output; keep pixels if it fails."""
    try:
        src = ImageCms.ImageCmsProfile(BytesIO(icc))
        if "srgb" in ImageCms.getProfileDescription(src).lower():
            return img
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(
            img, src, ImageCms.createProfile("sRGB"), outputMode=out_mode
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return img  # broken or mismatched profile: colours are a best effort
    return converted if converted is not None else img


def _fully_opaque(img: Image.Image) -> bool:
    extrema = img.getchannel("A").getextrema()
    return extrema[0] == 255


def encode(img: Image.Image, limits: ImageLimits) -> tuple[bytes, str]:
    img.info = {}  # strip EXIF, ICC, XMP and comments: savers copy some from info
    buf = BytesIO()
    if img.mode == "RGBA":
        img.save(buf, "PNG", compress_level=3)  # fast; bytes matter less than latency here
        return buf.getvalue(), "image/png"
    img.save(buf, "JPEG", quality=limits.jpeg_quality, optimize=False)
    return buf.getvalue(), "image/jpeg"
