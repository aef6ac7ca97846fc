"""Report output helpers: thumbnails, and writing files to a path or fsspec URL."""

from __future__ import annotations

import cv2
import fsspec
import numpy as np


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
