"""``AnonConfig``: everything that decides an anonymized image."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from faceveil.anon_core.imageio import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class AnonConfig:
    """Everything that decides an anonymized image; the same config gives the same bytes."""

    method: str = "blur"
    method_options: Mapping[str, object] = field(default_factory=dict)
    detector: str = "centerface"
    model_root: str | None = None
    threshold: float | None = None
    device: str = "cpu"
    threads: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    recognizer: str | None = None  # InsightFace recognition ONNX; None: dlib's embedded ResNet
    image_format: str = ""  # "jpg" or "png" for every output image; "": png for lossless inputs
