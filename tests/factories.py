"""Test inputs from the bundled public-domain images: photo folders with EXIF/GPS, shared data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anon_core import demo_data
from jobs.demo import sample_images


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


def varied_faces(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` (file name, bytes) pairs of varied face photos with GPS EXIF, named like people."""
    return sample_images(count, seed)


def write_folder(root: Path, files: list[tuple[str, bytes]], nest_every: int = 4) -> Path:
    """Write ``files`` under ``root``, every ``nest_every``-th into a subfolder."""
    for i, (name, data) in enumerate(files):
        folder = root / "nested" if nest_every and i % nest_every == 0 else root
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return root


def tar_members(source: Path | bytes) -> dict[str, bytes]:
    """Every file member of a tar (a path or its bytes), by name, in order."""
    import io
    import tarfile

    fileobj = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with fileobj, tarfile.open(fileobj=fileobj) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
