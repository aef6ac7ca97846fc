"""Report output helpers: strict JSON, thumbnails, and writing files to a path or fsspec URL."""

from __future__ import annotations

import json
import math

import cv2
import fsspec
import numpy as np


def clean(value: object) -> object:
    """JSON-safe copy: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(report: dict) -> str:
    """report.json text (strict JSON, no NaN)."""
    return json.dumps(clean(report), indent=2, allow_nan=False) + "\n"


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """JPEG (quality 90) bytes of an RGB thumbnail."""
    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    if not ok:
        raise ValueError("could not encode a thumbnail")
    return buf.tobytes()


def write_files(report_dir: str, files: dict[str, bytes]) -> None:
    """Write ``files`` (relative name -> bytes) under ``report_dir`` (a path or fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(report_dir)
    for name, data in files.items():
        path = f"{root.rstrip('/')}/{name}"
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(data)
