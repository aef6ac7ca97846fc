"""Fixed-shape face records shared by detectors, landmark models and anonymizers."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# ``extras`` entries that hold one value per face (the rest describe all faces, e.g. ``embedder``).
PER_FACE_EXTRAS = frozenset({"reliable"})


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
        """The faces at ``index`` (an integer or boolean array), with every per-face field,
        the ``PER_FACE_EXTRAS`` among them."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        extras = {
            k: np.asarray(v)[index] if k in PER_FACE_EXTRAS else v for k, v in self.extras.items()
        }
        return Faces(
            self.boxes[index],
            self.landmarks5[index],
            pick(self.landmarks68),
            pick(self.embeddings),
            extras,
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


# Two detections are one face when this share of the smaller box lies inside the other (a box
# inside a box, or two boxes of one face that the detector's suppression let through).
NESTED = 0.6
# Two such detections that both have reliable landmarks are still two faces when their five
# points lie further apart than this many inter-ocular distances on average.
SAME_POINTS = 0.5


def box_regions(faces: Faces, shape: tuple[int, ...]) -> np.ndarray:
    """The face boxes themselves as whole pixels (outward), clipped to the image, N x 4 int."""
    h, w = shape[:2]
    b = faces.boxes[:, :4].astype(np.float64)
    out = np.stack([np.floor(b[:, 0]), np.floor(b[:, 1]), np.ceil(b[:, 2]), np.ceil(b[:, 3])], 1)
    return np.clip(out, 0, [w, h, w, h]).astype(np.int32).reshape(-1, 4)


def one_per_face(faces: Faces) -> Faces:
    """``faces`` with every face that was detected more than once kept once, so that each face
    gets one decision from any method.

    Detections are ranked reliable first (``extras['reliable']`` when the landmark model set
    it), then by score; a detection whose box lies ``NESTED`` inside or around a higher-ranked
    one is merged into it, unless both have reliable landmarks that place the face elsewhere
    (two people). A merged face keeps the landmarks, embedding and score of its highest-ranked
    detection and gets a box (``cover_box``) whose whole-face region covers the regions of all
    its detections, so blur, pixelate and mask change at least every pixel they changed before.
    """
    n = len(faces)
    if n < 2:
        return faces
    reliable = faces.extras.get("reliable")
    owner = _owners(faces, None if reliable is None else np.asarray(reliable, bool).reshape(n))
    keep = np.flatnonzero(owner == np.arange(n))
    if len(keep) == n:
        return faces
    merged = faces.select(keep)
    boxes = merged.boxes.copy()
    for k, i in enumerate(keep):
        boxes[k, :4] = cover_box(faces.boxes[owner == i, :4])
    return replace(merged, boxes=boxes)


def _owners(faces: Faces, reliable: np.ndarray | None) -> np.ndarray:
    """For each detection, the index of the detection that stands for its face."""
    n = len(faces)
    b = faces.boxes.astype(np.float64)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    sure = np.ones(n, bool) if reliable is None else reliable
    rank = sorted(range(n), key=lambda i: (not sure[i], -b[i, 4], i))
    owner = np.arange(n)
    for pos, j in enumerate(rank):
        for i in rank[:pos]:
            w = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
            h = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
            nested = max(w, 0.0) * max(h, 0.0) >= NESTED * max(min(area[i], area[j]), 1e-6)
            located = reliable is not None and reliable[i] and reliable[j]
            if owner[i] == i and nested and not (located and not _same_points(faces, i, j)):
                owner[j] = i
                break
    return owner


def _same_points(faces: Faces, i: int, j: int) -> bool:
    a = faces.landmarks5[i].reshape(5, 2).astype(np.float64)
    b = faces.landmarks5[j].reshape(5, 2).astype(np.float64)
    iod = max(np.linalg.norm(a[0] - a[1]), np.linalg.norm(b[0] - b[1]), 1e-6)
    return bool(np.linalg.norm(a - b, axis=1).mean() <= SAME_POINTS * iod)


def _effective(boxes: np.ndarray) -> np.ndarray:
    """Boxes (N x 4) widened about their centre to the width ``face_regions`` gives them
    (at least 0.8 of their height): the region of a box is that of its effective box, and for
    such boxes a box inside another has its region inside the other's."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cx = (b[:, 0] + b[:, 2]) / 2
    half = np.maximum(b[:, 2] - b[:, 0], 0.8 * (b[:, 3] - b[:, 1])) / 2
    return np.stack([cx - half, b[:, 1], cx + half, b[:, 3]], axis=1)


def cover_box(boxes: np.ndarray) -> np.ndarray:
    """One box for the detections ``boxes`` (N x 4) of one face whose ``face_regions`` region
    (any grow) covers each of theirs: the box whose effective box contains the others', or
    else the union of their effective boxes, rounded outward to whole pixels."""
    eff = _effective(boxes)
    for k in range(len(eff)):
        if (eff[k, :2] <= eff[:, :2]).all() and (eff[k, 2:] >= eff[:, 2:]).all():
            return np.asarray(boxes, np.float32)[k, :4]
    union = [np.floor(eff[:, 0].min()), np.floor(eff[:, 1].min())]
    union += [np.ceil(eff[:, 2].max()), np.ceil(eff[:, 3].max())]
    return np.asarray(union, np.float32)
