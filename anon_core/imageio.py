"""Image decoding with safety limits, normalisation to 8-bit RGB, and metadata-free encoding."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

DEFAULT_MAX_PIXELS = 100_000_000
# The largest image file (or tar member) read into memory; a larger one is refused unread.
DEFAULT_MAX_FILE_BYTES = 256 * 2**20
MIN_SIDE = 8
LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "TIFF", "GIF"})
SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})

# Truncated files must fail, never decode partially with grey fill.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is a short stable code for quarantine records."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """8-bit RGB pixels (H x W x 3) plus what is needed to encode and restore faithfully.

    ``exact`` is False when normalisation lost information (alpha, 16-bit depth, CMYK,
    palette transparency, an EXIF rotation, later GIF frames): restoring such a file exactly
    needs its original bytes, not only its face regions.
    """

    rgb: np.ndarray
    format: str
    lossless: bool
    exact: bool

    @property
    def output_ext(self) -> str:
        return "png" if self.lossless else "jpg"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            # PIL's own warning limit is not ours: --max-pixels is checked below, on the header.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError("too_many_pixels", _over_pil_limit(max_pixels)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("undecodable", f"not a readable image ({type(exc).__name__})") from None
    if img.format not in SUPPORTED_FORMATS:
        raise ImageError("unsupported_format", f"format {img.format} is not supported")
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(
            "too_many_pixels", f"{w}x{h} = {w * h} pixels exceeds --max-pixels {max_pixels}"
        )
    if min(w, h) < MIN_SIDE:
        raise ImageError("too_small", f"{w}x{h} is below {MIN_SIDE} pixels on a side")
    return img


def _over_pil_limit(max_pixels: int) -> str:
    """The reason for an image PIL refuses to open (over twice its MAX_IMAGE_PIXELS)."""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if limit >= max_pixels:
        return f"more than {limit} pixels exceeds --max-pixels {max_pixels}"
    return f"more than {limit} pixels: PIL refuses to decode it, whatever --max-pixels {max_pixels}"


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, bool]:
    """8-bit RGB array and whether the conversion kept every bit of the decoded pixels."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8), True
    if mode in ("L", "1"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8), True
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.int64)
        peak = 65535 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255
        arr = np.clip(arr * 255 // peak, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2), peak == 255
    if mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2), False
    if mode == "P" and "transparency" not in img.info:
        return np.asarray(img.convert("RGB"), dtype=np.uint8), True
    if mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(background, rgba).convert("RGB")
        return np.asarray(flat, dtype=np.uint8), False
    return np.asarray(img.convert("RGB"), dtype=np.uint8), False


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode JPEG/PNG/WebP/BMP/TIFF/GIF bytes (first frame) to upright 8-bit RGB.

    Raises ImageError with a stable ``reason`` for empty, truncated, unreadable, oversized
    (decompression bomb) and tiny inputs. The pixel count is checked from the header before
    any pixel is decoded.
    """
    img = _open(data, max_pixels)
    fmt = "JPEG" if img.format == "MPO" else img.format
    multi_frame = getattr(img, "n_frames", 1) > 1
    try:
        img.seek(0)
        img.load()
        oriented = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("truncated", f"pixel data could not be decoded ({exc})") from None
    except Image.DecompressionBombError:
        raise ImageError("too_many_pixels", _over_pil_limit(max_pixels)) from None
    rotated = oriented is not img and oriented.size != img.size or _has_rotation(img)
    rgb, exact = _to_rgb(oriented)
    return DecodedImage(
        rgb=np.ascontiguousarray(rgb),
        format=fmt,
        lossless=fmt in LOSSLESS_FORMATS,
        exact=exact and not rotated and not multi_frame,
    )


def _has_rotation(img: Image.Image) -> bool:
    orientation = img.getexif().get(0x0112, 1)
    return orientation not in (None, 1)


def encode_image(rgb: np.ndarray, ext: str, png_level: int = 6) -> bytes:
    """Encode 8-bit RGB as ``jpg`` (quality 95) or ``png`` (zlib level ``png_level``), with no
    metadata at all.

    The image is rebuilt from bare pixels, so EXIF, GPS, XMP, ICC profiles and comments of the
    input cannot reach the output. Output bytes depend only on the pixels (deterministic).
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 uint8, got {rgb.shape} {rgb.dtype}")
    img = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    buf = io.BytesIO()
    if ext == "jpg":
        img.save(buf, format="JPEG", quality=95, optimize=False, progressive=False)
    elif ext == "png":
        img.save(buf, format="PNG", compress_level=png_level)
    else:
        raise ValueError(f"unknown output extension {ext!r}")
    return buf.getvalue()


def crop_png(rgb: np.ndarray, region: tuple[int, int, int, int]) -> bytes:
    """Lossless PNG bytes of ``region`` (x1, y1, x2, y2): the original pixels to seal.

    zlib level 1: about 3x faster than level 6 for some 5% more bytes, and the bytes are sealed
    (ciphertext) right after, so their size matters less than the time on every face.
    """
    x1, y1, x2, y2 = region
    return encode_image(np.ascontiguousarray(rgb[y1:y2, x1:x2]), "png", png_level=1)
