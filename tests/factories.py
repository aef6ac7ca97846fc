"""Test inputs from the bundled public-domain images: photo folders with EXIF/GPS, shared data."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anon_core import demo_data

# File names that look like people's names: they must never reach any output.
NAMES = ("jane_doe", "john_smith", "maria_garcia", "wei_zhang", "olga_petrova")
GPS_IFD = 0x8825


def shared_dir() -> Path:
    """``../shared`` beside the checkout, or FACEVEIL_SHARED."""
    env = os.environ.get("FACEVEIL_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the calling test with the reason when it is absent."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs ../shared/{'/'.join(parts)} (not present beside this checkout)")
    return path


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(demo_data.path(name)).convert("RGB"))


def jpeg_with_gps(pixels: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes carrying EXIF with a camera model, a description and GPS coordinates."""
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0110] = "SecretCam 3000"  # Model
    exif[0x010E] = "holiday photo of john_smith"  # ImageDescription
    exif[GPS_IFD] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def varied_faces(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` (file name, bytes) pairs: crops, flips and scales of the bundled face photos,
    JPEGs with GPS EXIF and some PNGs, named like people."""
    rng = np.random.default_rng(seed)
    sources = [rgb(n) for n in ("obama.jpg", "biden.jpg", "two_people.jpg", "obama2.jpg")]
    sources = [_shrink(s, 360) for s in sources] + [rgb("astronaut.png")[::2, ::2]]
    out = []
    for i in range(count):
        img = sources[i % len(sources)]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        h, w = img.shape[:2]
        dy, dx = rng.integers(0, max(1, h // 10)), rng.integers(0, max(1, w // 10))
        img = np.ascontiguousarray(img[dy : h - dy // 2, dx : w - dx // 2])
        name = f"{NAMES[i % len(NAMES)]}_{i:04d}"
        if i % 7 == 3:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            out.append((f"{name}.png", buf.getvalue()))
        else:
            out.append((f"{name}.jpg", jpeg_with_gps(img)))
    return out


def _shrink(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = side / max(h, w)
    pil = Image.fromarray(img).resize((round(w * scale), round(h * scale)), Image.LANCZOS)
    return np.asarray(pil)


def write_folder(root: Path, files: list[tuple[str, bytes]], nest_every: int = 4) -> Path:
    """Write ``files`` under ``root``, every ``nest_every``-th into a subfolder."""
    for i, (name, data) in enumerate(files):
        folder = root / "nested" if nest_every and i % nest_every == 0 else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return root
