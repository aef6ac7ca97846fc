"""Generated test inputs from the bundled public-domain photos: hostile files, large photos.

Each entry says what the pipeline must do with it: quarantine with a reason code, or anonymize
with at least a given number of faces found.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from faceveil.anon_core import demo_data


@dataclass(frozen=True)
class Case:
    """One input file and the outcome it must have: ``reason`` (quarantined) or ``min_faces``."""

    name: str
    data: bytes
    reason: str | None = None
    min_faces: int = 0


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _face(name: str = "obama.jpg", side: int | None = None) -> Image.Image:
    img = Image.open(demo_data.path(name)).convert("RGB")
    if side:
        img = img.resize((side, round(side * img.height / img.width)))
    return img


def png_claiming(width: int, height: int) -> bytes:
    """A valid 16x16 PNG whose IHDR is rewritten (with a correct CRC) to claim width x height."""
    data = bytearray(_encode(Image.new("RGB", (16, 16)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def png16_rgb(img: Image.Image) -> bytes:
    """A 48-bit (16 bits per channel) RGB PNG, written by OpenCV since Pillow cannot."""
    bgr16 = np.asarray(img)[:, :, ::-1].astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", bgr16)
    assert ok
    return buf.tobytes()


def palette_with_transparency(img: Image.Image) -> bytes:
    pal = img.quantize(colors=255)
    pal.info["transparency"] = 0
    return _encode(pal, "PNG", transparency=0)


def animated_gif(img: Image.Image) -> bytes:
    frames = [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), img.rotate(5)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                   loop=0)  # fmt: skip


def exif_rotated(img: Image.Image) -> bytes:
    """Pixels stored turned 90 degrees, with EXIF Orientation 6 (rotate 90 CW to view), so only
    a decoder that honours the tag sees the face upright."""
    stored = img.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(stored, "JPEG", quality=92, exif=exif)


def face_grid(n: int = 10, cell: int = 96) -> bytes:
    """n x n copies of one face, each in its own cell: n*n faces in one image."""
    face = _face("obama.jpg")
    w, h = face.size
    crop = face.crop((int(w * 0.2), int(h * 0.05), int(w * 0.8), int(h * 0.75))).resize(
        (cell, cell)
    )
    grid = Image.new("RGB", (n * cell, n * cell), "white")
    for i in range(n * n):
        grid.paste(crop, ((i % n) * cell, (i // n) * cell))
    return _encode(grid, "JPEG", quality=92)


def panorama(width: int = 12000, height: int = 1500, faces: int = 4) -> bytes:
    """A wide grey panorama with ``faces`` portraits spread along it."""
    pano = Image.new("RGB", (width, height), (128, 128, 128))
    portrait = _face("obama.jpg", side=700)
    for i in range(faces):
        x = int((i + 0.5) * width / faces) - portrait.width // 2
        pano.paste(portrait, (x, (height - portrait.height) // 2))
    return _encode(pano, "JPEG", quality=85)


def corpus() -> list[Case]:
    """Every case: name (its file name in the input folder), bytes and expected outcome."""
    obama = _face("obama.jpg", side=480)
    jpeg = _encode(obama, "JPEG", quality=90)
    png = _encode(obama, "PNG")
    gray16 = Image.fromarray(np.asarray(obama.convert("L")).astype(np.uint16) * 257)
    return [
        Case("zero_bytes.jpg", b"", reason="empty"),
        Case("truncated.jpg", jpeg[: len(jpeg) // 2], reason="truncated"),
        Case("truncated.png", png[: len(png) // 2], reason="truncated"),
        Case("not_an_image.jpg", b"%PDF-1.4 definitely not an image\n" * 40, reason="undecodable"),
        Case("bomb.png", png_claiming(30000, 30000), reason="too_many_pixels"),
        Case("one_pixel.png", _encode(Image.new("RGB", (1, 1), "red"), "PNG"), reason="too_small"),
        Case("cmyk.jpg", _encode(obama.convert("CMYK"), "JPEG", quality=90), min_faces=1),
        Case("gray16.png", _encode(gray16, "PNG"), min_faces=1),
        Case("rgb16.png", png16_rgb(obama), min_faces=1),
        Case("palette_alpha.png", palette_with_transparency(obama), min_faces=1),
        Case("animated.gif", animated_gif(obama), min_faces=1),
        Case("exif_rotated.jpg", exif_rotated(obama), min_faces=1),
        Case("hundred_faces.jpg", face_grid(10), min_faces=100),
        Case("panorama.jpg", panorama(), min_faces=4),
        Case("photo.jpg", _encode(_face("two_people.jpg"), "JPEG", quality=90), min_faces=2),
    ]


def large_photos(count: int, width: int = 1600) -> list[tuple[str, bytes]]:
    """``count`` distinct JPEG photos ``width`` pixels wide, one to two faces each.

    At this size the detector's tiled pass runs, so an image takes about half a second on one
    CPU: slow enough that a job of a few shards can be interrupted half way.
    """
    sources = ("two_people.jpg", "obama.jpg", "biden.jpg", "obama2.jpg")
    out = []
    for i in range(count):
        img = _face(sources[i % len(sources)], side=width)
        if (i // len(sources)) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        shade = Image.new("RGB", img.size, (i * 37 % 256, i * 91 % 256, i * 53 % 256))
        img = Image.blend(img, shade, 0.08)
        out.append((f"person_{i:03d}.jpg", _encode(img, "JPEG", quality=88)))
    return out
