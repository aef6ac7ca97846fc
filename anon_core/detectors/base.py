"""The detector protocol and the multi-scale wrapper that finds small faces in large photos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from faceveil.anon_core.faces import Faces, nms


@runtime_checkable
class Detector(Protocol):
    """Finds faces in RGB uint8 images at the size given; one Faces per image, in order."""

    name: str

    def __call__(self, images: Sequence[np.ndarray]) -> list[Faces]: ...


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """(height, width) of an h x w image resized by ``scale``, as ``cv2.resize`` is asked for."""
    if scale == 1.0:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    sh, sw = scaled_size(*image.shape[:2], scale)
    return cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class View:
    """One pass of the multi-scale detector: the image resized by ``scale`` (INTER_AREA), cut to
    ``box`` (x1, y1, x2, y2 in the resized image)."""

    scale: float
    box: tuple[int, int, int, int]

    def place(self, faces: Faces) -> Faces:
        """Faces found in the view, in the original image's coordinates."""
        return _rescale(faces, 1 / self.scale, self.box[0] / self.scale, self.box[1] / self.scale)


def _tiles(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    step = tile - overlap
    ys = list(range(0, max(h - overlap, 1), step)) if h > tile else [0]
    xs = list(range(0, max(w - overlap, 1), step)) if w > tile else [0]
    return [(x, y, min(x + tile, w), min(y + tile, h)) for y in ys for x in xs]


class MultiScaleDetector:
    """Runs ``base`` on the whole image (downscaled to ``max_side``) and, for larger images, on
    overlapping tiles at ``tile_scale`` of full resolution, then merges by non-maximum suppression.

    The global pass finds large faces that a tile would cut; the tiled pass keeps small faces
    (40 pixels in a 4000 x 3000 photo) above the size the base detector can see.
    """

    def __init__(
        self,
        base: Detector,
        max_side: int = 1280,
        tile: int = 1024,
        tile_scale: float = 0.5,
        nms_threshold: float = 0.4,
    ) -> None:
        self.base = base
        self.name = base.name
        self.max_side = max_side
        self.tile = tile
        self.tile_scale = tile_scale
        self.nms_threshold = nms_threshold

    def __call__(self, images: Sequence[np.ndarray]) -> list[Faces]:
        small = [i for i, im in enumerate(images) if max(im.shape[:2]) <= self.max_side]
        results: list[Faces | None] = [None] * len(images)
        for i, faces in zip(small, self.base([images[i] for i in small]), strict=True):
            results[i] = faces
        for i, image in enumerate(images):
            if results[i] is None:
                results[i] = self._large(image)
        return results  # type: ignore[return-value]

    def views(self, h: int, w: int) -> list[View]:
        """The passes for an image larger than ``max_side``: the whole image at ``max_side``,
        then overlapping tiles at ``tile_scale`` (the device path follows the same list)."""
        scale = self.max_side / max(h, w)
        ts = max(self.tile_scale, scale)
        sh, sw = scaled_size(h, w, ts)
        whole = View(scale, (0, 0, *scaled_size(h, w, scale)[::-1]))
        return [whole] + [View(ts, box) for box in _tiles(sh, sw, self.tile, self.tile // 4)]

    def merge(self, found: Sequence[Faces]) -> Faces:
        """One image's faces from all its views (already placed), after NMS."""
        boxes = np.concatenate([f.boxes for f in found])
        marks = np.concatenate([f.landmarks5 for f in found])
        if len(boxes) == 0:
            return Faces.empty()
        keep = nms(boxes, self.nms_threshold)
        return Faces(boxes[keep], marks[keep])

    def _large(self, image: np.ndarray) -> Faces:
        resized: dict[float, np.ndarray] = {}
        found = []
        for view in self.views(*image.shape[:2]):
            if view.scale not in resized:
                resized[view.scale] = _resize(image, view.scale)
            x1, y1, x2, y2 = view.box
            crop = np.ascontiguousarray(resized[view.scale][y1:y2, x1:x2])
            found.append(view.place(self.base([crop])[0]))
        return self.merge(found)


def _rescale(faces: Faces, factor: float, dx: float, dy: float) -> Faces:
    boxes = faces.boxes.copy()
    boxes[:, :4] *= factor
    boxes[:, [0, 2]] += dx
    boxes[:, [1, 3]] += dy
    marks = faces.landmarks5 * factor
    marks[:, 0::2] += dx
    marks[:, 1::2] += dy
    return Faces(boxes.astype(np.float32), marks.astype(np.float32))
