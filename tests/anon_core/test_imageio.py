"""Decoding limits and normalisation, and metadata-free encoding."""

import io

import numpy as np
import pytest
from PIL import Image

from faceveil.anon_core.imageio import ImageError, crop_png, decode_image, encode_image
from faceveil.jobs.demo import jpeg_with_gps
from tests.factories import rgb
from tests.jobs.corpus import png_claiming


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image" * 10, "undecodable"),
        (png_claiming(30000, 30000), "too_many_pixels"),
    ],
)
def test_bad_inputs_give_a_stable_reason(data, reason):
    with pytest.raises(ImageError) as err:
        decode_image(data, max_pixels=100_000_000)
    assert err.value.reason == reason


def test_truncated_jpeg_is_refused_not_grey_filled():
    whole = jpeg_with_gps(rgb("obama.jpg"))
    with pytest.raises(ImageError) as err:
        decode_image(whole[: len(whole) // 2])
    assert err.value.reason in {"truncated", "undecodable"}


def test_tiny_image_is_refused():
    with pytest.raises(ImageError) as err:
        decode_image(_encode(Image.new("RGB", (1, 1)), "PNG"))
    assert err.value.reason == "too_small"


@pytest.mark.parametrize(
    ("mode", "fmt", "exact"),
    [("L", "PNG", True), ("CMYK", "JPEG", False), ("I;16", "PNG", False), ("RGBA", "PNG", False)],
)
def test_modes_normalise_to_8bit_rgb(mode, fmt, exact):
    base = Image.fromarray(rgb("astronaut.png")[:64, :64])
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
        assert img.mode.startswith("I;16")
    else:
        img = base.convert(mode)
    decoded = decode_image(_encode(img, fmt))
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (64, 64, 3)
    assert decoded.exact is exact


def test_exif_orientation_is_applied():
    pixels = rgb("astronaut.png")[:60, :40]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    data = _encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)
    decoded = decode_image(data)
    assert decoded.rgb.shape[:2] == (40, 60)
    assert decoded.exact is False


def test_gif_first_frame_and_palette_transparency():
    frames = [Image.new("RGB", (32, 32), color=c) for c in ((200, 30, 30), (30, 30, 200))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    decoded = decode_image(data)
    assert decoded.format == "GIF" and decoded.lossless and not decoded.exact
    assert decoded.rgb[0, 0, 0] > decoded.rgb[0, 0, 2]  # the first (red) frame


def test_encode_strips_all_metadata_and_is_deterministic():
    decoded = decode_image(jpeg_with_gps(rgb("obama.jpg")))
    out = encode_image(decoded.rgb, decoded.output_ext)
    assert out == encode_image(decoded.rgb, decoded.output_ext)
    reread = Image.open(io.BytesIO(out))
    assert not reread.getexif()
    assert "icc_profile" not in reread.info and "exif" not in reread.info
    assert b"SecretCam" not in out and b"GPS" not in out and b"john_smith" not in out


def test_png_stays_lossless_and_crop_png_is_exact():
    pixels = rgb("astronaut.png")
    decoded = decode_image(_encode(Image.fromarray(pixels), "PNG"))
    assert decoded.output_ext == "png"
    again = decode_image(encode_image(decoded.rgb, "png")).rgb
    assert np.array_equal(again, pixels)
    crop = decode_image(crop_png(pixels, (10, 20, 110, 220))).rgb
    assert np.array_equal(crop, pixels[20:220, 10:110])
