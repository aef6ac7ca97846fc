"""Fixed-shape face records shared by detectors, landmark models and anonymizers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Faces:
    """Faces found in one image, in pixel coordinates of that image.

    ``boxes`` is N x 5 (x1, y1, x2, y2, score) and ``landmarks5`` N x 10
    (left eye, right eye, nose, left mouth corner, right mouth corner as x, y pairs),
    both float32 and present even when N is 0. ``landmarks68`` (N x 68 x 2) and
    ``embeddings`` (N x D) are filled by later stages that need them.
    """

    boxes: np.ndarray
    landmarks5: np.ndarray
    landmarks68: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 5:
            raise ValueError(f"boxes must be N x 5, got {self.boxes.shape}")
        if self.landmarks5.shape != (len(self.boxes), 10):
            raise ValueError(f"landmarks5 must be N x 10, got {self.landmarks5.shape}")

    @classmethod
    def empty(cls) -> Faces:
        return cls(np.zeros((0, 5), np.float32), np.zeros((0, 10), np.float32))

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, index: np.ndarray) -> Faces:
        """The faces at ``index`` (an integer or boolean array), with every per-face field."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Faces(
            self.boxes[index],
            self.landmarks5[index],
            pick(self.landmarks68),
            pick(self.embeddings),
            dict(self.extras),
        )


def face_regions(faces: Faces, shape: tuple[int, ...], grow: float = 0.3) -> np.ndarray:
    """Whole-face rectangles (forehead to chin, ear to ear) clipped to the image, N x 4 int.

    Detector boxes hug eyebrows to lips; the region is widened by ``grow`` of the box width
    in total, split evenly left and right, and raised more at the top (forehead, hair
    line) than lowered at the bottom (chin).
    """
    h, w = shape[:2]
    if len(faces) == 0:
        return np.zeros((0, 4), np.int32)
    x1, y1, x2, y2 = (faces.boxes[:, i].astype(np.float64) for i in range(4))
    bw, bh = x2 - x1, y2 - y1
    size = np.maximum(bw, bh)
    cx = (x1 + x2) / 2
    half_w = np.maximum(bw, 0.8 * size) * (0.5 + grow / 2)
    top = y1 - bh * (grow * 0.9)
    bottom = y2 + bh * (grow * 0.45)
    out = np.stack([cx - half_w, top, cx + half_w, bottom], axis=1)
    out = np.stack(
        [
            np.clip(np.floor(out[:, 0]), 0, w),
            np.clip(np.floor(out[:, 1]), 0, h),
            np.clip(np.ceil(out[:, 2]), 0, w),
            np.clip(np.ceil(out[:, 3]), 0, h),
        ],
        axis=1,
    )
    return out.astype(np.int32)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (N x >=4) with every box in ``b``."""
    ax1, ay1, ax2, ay2 = (a[:, None, i] for i in range(4))
    bx1, by1, bx2, by2 = (b[None, :, i] for i in range(4))
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0, None)
    inter = iw * ih
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def nms(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-boxes[:, 4], kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if order.size == 1:
            break
        overlap = iou_matrix(boxes[i : i + 1], boxes[order[1:]])[0]
        order = order[1:][overlap < threshold]
    return np.asarray(keep, dtype=np.int64)


def matched(found: Faces, box: np.ndarray, min_iou: float = 0.3) -> bool:
    """Whether any detection in ``found`` overlaps ``box`` with IoU of at least ``min_iou``."""
    if len(found) == 0:
        return False
    return bool(iou_matrix(found.boxes, np.asarray(box, np.float64)[None, :4]).max() >= min_iou)
