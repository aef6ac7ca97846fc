"""The stage protocol: where ``FaceAnonymizer`` detects and anonymizes, and the plain CPU stage.

``FaceAnonymizer`` decodes, encodes, quarantines and runs the face stage (landmarks, embeddings);
a stage does the model work on batches of decoded images: ``load`` a group, ``detect`` in it,
``anonymize`` it. ``CpuStage`` is the default; ``anon_core.accel.AcceleratedStage`` does the
same on a torch device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from faceveil.anon_core import methods
from faceveil.anon_core.detectors import Detector, build_detector
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.imageio import DecodedImage
from faceveil.anon_core.methods.base import Anonymizer, MethodOutput

if TYPE_CHECKING:
    from faceveil.anon_core.config import AnonConfig


@runtime_checkable
class Stage(Protocol):
    """Detection and the face method over batches of RGB uint8 images, all of one device.

    ``workers`` is the number of decode/encode threads the pipeline should overlap with the
    stage (0: everything in the caller's thread). ``groups`` splits the images (by shape) into
    the batches the stage wants; ``load`` puts one batch where the stage works and the result
    is handed back to ``detect`` and ``anonymize``. ``decode`` and ``encode`` may do the codec
    work on the stage's device (None: the pipeline's own CPU codec does it). ``where(step)``
    names the device a step ('detect' or 'anonymize') runs on for quarantine reasons ('' on
    the host).
    """

    detector: Detector
    method: Anonymizer
    workers: int

    def decode(self, data: bytes, max_pixels: int) -> DecodedImage | None: ...
    def encode(self, rgb: np.ndarray, ext: str) -> bytes | None: ...
    def groups(self, shapes: Sequence[tuple[int, ...]]) -> list[list[int]]: ...
    def load(self, images: Sequence[np.ndarray]) -> Any: ...
    def detect(self, batch: Any, images: Sequence[np.ndarray]) -> list[Faces]: ...
    def anonymize(
        self, batch: Any, images: Sequence[np.ndarray], faces: Sequence[Faces]
    ) -> list[MethodOutput]: ...
    def where(self, step: str) -> str: ...


def config_detector(config: AnonConfig) -> Detector:
    """The detector an ``AnonConfig`` names."""
    return build_detector(
        config.detector, config.model_root, config.threshold, config.device, config.threads
    )


def config_method(config: AnonConfig) -> Anonymizer:
    """The method an ``AnonConfig`` names, with its options."""
    return methods.create(config.method, **dict(config.method_options))


class CpuStage:
    """The plain stage: the detector's own batching, then the method image by image."""

    workers = 0

    def __init__(
        self, config: AnonConfig, detector: Detector | None = None, method: Anonymizer | None = None
    ) -> None:
        self.detector = detector or config_detector(config)
        self.method = method or config_method(config)

    def decode(self, data: bytes, max_pixels: int) -> DecodedImage | None:
        return None

    def encode(self, rgb: np.ndarray, ext: str) -> bytes | None:
        return None

    def groups(self, shapes: Sequence[tuple[int, ...]]) -> list[list[int]]:
        return [list(range(len(shapes)))] if shapes else []

    def load(self, images: Sequence[np.ndarray]) -> Any:
        return images

    def detect(self, batch: Any, images: Sequence[np.ndarray]) -> list[Faces]:
        return self.detector(list(images))

    def anonymize(
        self, batch: Any, images: Sequence[np.ndarray], faces: Sequence[Faces]
    ) -> list[MethodOutput]:
        return [self.method(image, f) for image, f in zip(images, faces, strict=True)]

    def where(self, step: str) -> str:
        return ""
