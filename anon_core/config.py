"""``AnonConfig``: everything that decides an anonymized image; :func:`from_args`, how every
config dataclass is filled from a parsed command line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from faceveil.anon_core.imageio import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS

C = TypeVar("C")


def from_args(config: type[C], args: object, **given: Any) -> C:
    """The dataclass ``config`` with the fields in ``given``, every other field that ``args``
    (a parsed argparse namespace) has an attribute of the same name for taken from it, and the
    rest at their defaults."""
    names = {f.name for f in fields(config) if f.init} - given.keys()
    return config(**{n: getattr(args, n) for n in names if hasattr(args, n)}, **given)


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
