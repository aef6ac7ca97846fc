"""Face boxes known before detection (a dataset's own ``face_bboxes``): checked, scaled to
pixels, and joined to the detector's faces so that both are anonymized (recall first)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faceveil.anon_core.faces import Faces, iou_matrix

# A known box that overlaps a detection at least this much is taken as that detection's face.
SAME_FACE_IOU = 0.5
# Landmarks placed inside a known box (fractions of its width and height): eyes, nose, mouth
# corners. They say nothing of where the face's features are (the box may sit beside the face),
# so the landmark model never trusts a face that carries them (``is_template``): a method that
# needs landmarks masks it.
_TEMPLATE = np.array([0.3, 0.4, 0.7, 0.4, 0.5, 0.6, 0.35, 0.8, 0.65, 0.8], np.float32)


class BoxesError(ValueError):
    """Known boxes that cannot be used (not N x 4 numbers, not finite, x2 <= x1)."""


@dataclass(frozen=True)
class WithBoxes:
    """An image and the face boxes known for it: N x 4 ``(x1, y1, x2, y2)``, in pixels or, with
    ``normalized``, as fractions (0..1) of the image's width and height."""

    image: bytes | np.ndarray
    boxes: np.ndarray
    normalized: bool = False


def parse_boxes(value: object) -> np.ndarray:
    """``value`` (a list of [x1, y1, x2, y2], possibly empty or None) as an N x 4 float array;
    raises BoxesError for anything else."""
    if value is None:
        return np.zeros((0, 4), np.float64)
    try:
        boxes = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BoxesError("boxes are not lists of 4 numbers") from None
    if boxes.size == 0:
        return np.zeros((0, 4), np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise BoxesError(f"boxes must be N x 4 [x1, y1, x2, y2], got shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise BoxesError("boxes hold a value that is not finite")
    if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
        raise BoxesError("a box has x2 <= x1 or y2 <= y1")
    return boxes


def to_pixels(known: WithBoxes, shape: tuple[int, ...]) -> np.ndarray:
    """The known boxes in pixels of an image of ``shape``, clipped to it; boxes left empty
    after clipping (wholly outside the image) are dropped."""
    h, w = shape[:2]
    boxes = parse_boxes(known.boxes)
    if known.normalized:
        boxes = boxes * np.array([w, h, w, h], np.float64)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep]


def _template(boxes: np.ndarray) -> np.ndarray:
    size = np.repeat(boxes[:, 2:4] - boxes[:, 0:2], 5, axis=0).reshape(-1, 10)
    return (np.tile(boxes[:, 0:2], 5) + size * _TEMPLATE).astype(np.float32)


def is_template(faces: Faces) -> np.ndarray:
    """N bools: which faces carry the template landmarks of a known box (``join_known``),
    not a detector's."""
    if len(faces) == 0:
        return np.zeros(0, bool)
    template = _template(faces.boxes[:, :4].astype(np.float64))
    # both sides are float32 roundings of the same numbers: a few units in the last place apart,
    # which grows with the coordinate (0.002 px at 30,000); a detector's ten points never all
    # land that close to the template
    return np.isclose(faces.landmarks5, template, rtol=1e-6, atol=1e-3).all(axis=1)


def join_known(found: Faces, known: np.ndarray | None) -> Faces:
    """``found`` plus every known box (pixels, N x 4) that no detection already covers (IoU
    below SAME_FACE_IOU), with score 1 and template landmarks."""
    if known is None or len(known) == 0:
        return found
    if len(found):
        known = known[iou_matrix(known, found.boxes).max(axis=1) < SAME_FACE_IOU]
    if len(known) == 0:
        return found
    landmarks = _template(known)
    boxes = np.concatenate([known, np.ones((len(known), 1))], axis=1).astype(np.float32)
    extra = Faces(boxes, landmarks)
    if len(found) == 0:
        return Faces(extra.boxes, extra.landmarks5, extras=dict(found.extras))
    return Faces(
        np.concatenate([found.boxes, extra.boxes]),
        np.concatenate([found.landmarks5, extra.landmarks5]),
        extras=dict(found.extras),
    )
