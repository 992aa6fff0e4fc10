"""prepare_image: limits, orientation, transparency and decoding failures."""

from __future__ import annotations

import hashlib
import pickle
import struct
import zlib
from io import BytesIO

import pytest
from PIL import Image, ImageCms

from llmflow.errors import ConfigError
from llmflow.services.images import ImageError, ImageLimits, decode_only, prepare_image
from llmflow.services.images.prepare import shrink_target

LIMITS = ImageLimits()


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def gradient_jpeg(width: int, height: int, **params: object) -> bytes:
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    return encode(img, "JPEG", **params)


def huge_header_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height (CRC fixed so Pillow accepts it)."""
    raw = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr_start = 8 + 8  # signature, then chunk length + type
    raw[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(raw[12 : ihdr_start + 13]))
    raw[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(raw)


def reopen(data: bytes) -> Image.Image:
    img = Image.open(BytesIO(data))
    img.load()
    return img


def expect_error(raw: bytes, kind: str, limits: ImageLimits = LIMITS) -> ImageError:
    with pytest.raises(ImageError) as info:
        prepare_image(raw, limits)
    assert info.value.kind == kind, str(info.value)
    return info.value


def test_large_jpeg_is_downscaled_to_max_side() -> None:
    out = prepare_image(gradient_jpeg(1600, 1200), LIMITS)
    assert (out.width, out.height) == (1024, 768)
    assert (out.original_width, out.original_height) == (1600, 1200)
    assert out.original_format == "JPEG"
    assert out.mime == "image/jpeg"
    assert reopen(out.data).size == (1024, 768)


def test_whole_factor_used_when_it_lands_near_max_side() -> None:
    # 3000 / 3 = 1000 px is within 10% of 1024: cheap integer shrinking, not LANCZOS.
    out = prepare_image(gradient_jpeg(3000, 2000), LIMITS)
    assert (out.width, out.height) == (1000, 667)
    assert reopen(out.data).size == (1000, 667)
    assert prepare_image(gradient_jpeg(4000, 3000), LIMITS).width == 1000  # DCT scaling 1/4


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((800, 600), ((800, 600), 1)),
        ((2000, 1500), ((1000, 750), 2)),
        ((2100, 1000), ((1024, 488), 0)),  # 2100 / 3 = 700 px would be too small
        ((1000, 4096), ((250, 1024), 4)),
    ],
)
def test_target_sizes(size: tuple[int, int], expected: tuple[tuple[int, int], int]) -> None:
    assert shrink_target(size, 1024) == expected


def test_small_image_is_not_upscaled() -> None:
    out = prepare_image(gradient_jpeg(300, 200), LIMITS)
    assert (out.width, out.height) == (300, 200)


def test_exif_orientation_6_swaps_width_and_height_and_metadata_is_stripped() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    raw = gradient_jpeg(300, 200, exif=exif.tobytes(), comment=b"secret")
    out = prepare_image(raw, LIMITS)
    assert (out.width, out.height) == (200, 300)
    assert (out.original_width, out.original_height) == (200, 300)
    img = reopen(out.data)
    assert not img.getexif()
    assert "comment" not in img.info


def test_png_with_alpha_stays_png() -> None:
    img = Image.new("RGBA", (2000, 1000), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 1000, 1000))
    out = prepare_image(encode(img, "PNG"), LIMITS)
    assert out.mime == "image/png"
    assert (out.width, out.height) == (1000, 500)
    decoded = reopen(out.data)
    assert decoded.mode == "RGBA"
    assert decoded.getpixel((0, 0)) == (0, 0, 0, 0)
    assert out.data_url().startswith("data:image/png;base64,")


def test_opaque_alpha_channel_becomes_jpeg() -> None:
    img = Image.new("RGBA", (64, 64), (10, 20, 30, 255))
    assert prepare_image(encode(img, "PNG"), LIMITS).mime == "image/jpeg"


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    raw = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    out = prepare_image(raw, LIMITS)
    red, _, blue = reopen(out.data).getpixel((20, 20))  # type: ignore[misc]
    assert red > 200
    assert blue < 50
    assert out.original_format == "GIF"


def test_sixteen_bit_greyscale_png_is_scaled_not_clipped() -> None:
    raw = encode(Image.new("I;16", (8, 8), 32768), "PNG")
    r, _, _ = reopen(prepare_image(raw, LIMITS).data).getpixel((4, 4))  # type: ignore[misc]
    assert 120 <= r <= 136


def test_icc_profile_is_not_carried_over() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = prepare_image(gradient_jpeg(64, 64, icc_profile=icc), LIMITS)
    assert "icc_profile" not in reopen(out.data).info


def test_sha256_matches_data() -> None:
    out = prepare_image(gradient_jpeg(200, 100), LIMITS)
    assert out.sha256 == hashlib.sha256(out.data).hexdigest()
    assert "data=" not in repr(out)  # bytes stay out of logs


def test_huge_header_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr("PIL.PngImagePlugin.PngImageFile.load", no_decode)
    err = expect_error(huge_header_png(9000, 9000), "too_many_pixels")
    assert str(err) == "image is 9000x9000 = 81.0 MP, limit 40.0 MP"
    with pytest.raises(ImageError, match=r"81\.0 MP"):
        decode_only(huge_header_png(9000, 9000))


def test_too_many_bytes() -> None:
    err = expect_error(gradient_jpeg(300, 200), "too_large", ImageLimits(max_bytes=100))
    assert "limit 100 bytes" in str(err)


def test_random_bytes_are_unreadable() -> None:
    expect_error(bytes(range(256)) * 8, "unreadable")


def test_truncated_jpeg_is_unreadable() -> None:
    raw = gradient_jpeg(400, 300)
    expect_error(raw[: len(raw) // 2], "unreadable")


def test_eps_is_an_unsupported_format() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    err = expect_error(eps, "unsupported_format")
    assert "EPS" in str(err)


def test_bmp_is_unsupported_unless_allowed() -> None:
    raw = encode(Image.new("RGB", (10, 10)), "BMP")
    expect_error(raw, "unsupported_format")
    allowed = ImageLimits(formats=("bmp", "jpeg"))
    assert prepare_image(raw, allowed).original_format == "BMP"


def test_eps_can_never_be_allowed() -> None:
    with pytest.raises(ConfigError, match="EPS"):
        ImageLimits(formats=("JPEG", "eps"))


def test_decode_only_returns_size() -> None:
    assert decode_only(gradient_jpeg(320, 240)) == (320, 240)
    with pytest.raises(ImageError) as info:
        decode_only(b"not an image")
    assert info.value.kind == "unreadable"


def test_image_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(ImageError("too_large", "x")))
    assert (err.kind, str(err)) == ("too_large", "x")
