"""Face detectors behind one protocol, built by name."""

from __future__ import annotations

import os
from pathlib import Path

from faceveil.anon_core.detectors.base import Detector, MultiScaleDetector
from faceveil.anon_core.models import sha256_file

NAMES = ("centerface", "scrfd")


def build_detector(
    name: str,
    model_root: str | Path | None = None,
    threshold: float | None = None,
    device: str = "cpu",
    threads: int = 0,
) -> Detector:
    """The detector ``name`` (``centerface`` needs nothing; ``scrfd`` needs ``model_root``),
    searching each image at full and tiled resolution (:class:`MultiScaleDetector`)."""
    options: dict = {"device": device, "threads": threads}
    if threshold is not None:
        options["threshold"] = threshold
    if name == "centerface":
        from faceveil.anon_core.detectors.centerface import CenterFace

        base: Detector = CenterFace(**options)
    elif name == "scrfd":
        if model_root is None:
            raise ValueError("the scrfd detector needs a model directory (--model-root)")
        from faceveil.anon_core.detectors.scrfd import SCRFD

        base = SCRFD(model_root, **options)
    else:
        raise ValueError(f"unknown detector {name!r}; choose from {list(NAMES)}")
    return MultiScaleDetector(base)


def detector_info(detector: Detector) -> dict:
    """Name, weight file and sha256 of a detector (through the multi-scale wrapper)."""
    base = detector.base if isinstance(detector, MultiScaleDetector) else detector
    path = getattr(base, "model_path", None)
    if path is None and base.name == "centerface":
        from faceveil.anon_core.detectors.centerface import bundled_model_path

        path = bundled_model_path()
    info = {"name": base.name, "threshold": getattr(base, "threshold", None)}
    if path is not None:
        info.update(file=os.path.basename(str(path)), sha256=sha256_file(str(path)))
    return info


__all__ = ["NAMES", "Detector", "MultiScaleDetector", "build_detector", "detector_info"]
