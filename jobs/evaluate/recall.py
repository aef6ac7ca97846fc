"""Recall per group: detection recall and residual faces per gender, race and age band of a
labelled face set, and on small faces composited into larger synthetic scenes (ground truth
known by construction).

Each labelled image is one centred face. It is *detected* when the anonymizer's detector finds
a face containing the image centre; it is a *residual face* when the pipeline (method mask: the
detection decides, not the method) releases the image with no anonymized region over that
centre. In the scenes the same faces are rescaled so that their detected box is 16, 24, 32 or
48 pixels wide and pasted on a smooth, face-free background; a face is detected when a
detection overlaps its known box (IoU >= 0.3), residual when no region covers its centre.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.faces import matched
from faceveil.anon_core.labels import AttributeSet, decoded, load_attribute_set
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.results import AnonResult
from faceveil.jobs.evaluate.config import RecallConfig
from faceveil.jobs.evaluate.metrics import central_face

log = logging.getLogger(__name__)

GENDERS = {0: "male", 1: "female"}


@dataclass
class Outcomes:
    """Per ground-truth face: found by the detector, released un-anonymized, quarantined."""

    detected: list[bool]
    residual: list[bool]
    quarantined: list[bool]

    @classmethod
    def empty(cls) -> Outcomes:
        return cls([], [], [])

    def add(self, detected: bool, residual: bool, quarantined: bool) -> None:
        self.detected.append(detected)
        self.residual.append(residual)
        self.quarantined.append(quarantined)

    def summary(self, pick: np.ndarray | None = None) -> dict:
        """Counts and rates over the faces in ``pick`` (all when None)."""
        detected, residual = np.array(self.detected, bool), np.array(self.residual, bool)
        quarantined = np.array(self.quarantined, bool)
        if pick is not None:
            detected, residual, quarantined = detected[pick], residual[pick], quarantined[pick]
        n = len(detected)
        return {
            "n": n,
            "detected": int(detected.sum()),
            "recall": float(detected.mean()) if n else None,
            "residual": int(residual.sum()),
            "residual_rate": float(residual.mean()) if n else None,
            "quarantined": int(quarantined.sum()),
        }


def _covered(result: AnonResult, point: tuple[float, float]) -> bool:
    if result.output is None:
        return False
    x, y = point
    r = np.asarray(result.output.regions, np.float64).reshape(-1, 4)
    return bool(np.any((r[:, 0] <= x) & (x <= r[:, 2]) & (r[:, 1] <= y) & (y <= r[:, 3])))


def _pipeline(detector: Detector) -> FaceAnonymizer:
    return FaceAnonymizer(AnonConfig(method="mask"), detector=detector)


def _age_band(age: float, bands: tuple[tuple[int, int], ...]) -> str:
    for low, high in bands:
        if low <= age <= high:
            return f"{low}+" if high >= 120 else f"{low}-{high}"
    return "other"


def _groups(data: AttributeSet, config: RecallConfig) -> dict[str, np.ndarray]:
    return {
        "gender": np.array([GENDERS.get(int(g), str(g)) for g in data.gender]),
        "race": np.asarray(data.race, str),
        "age": np.array([_age_band(a, config.age_bands) for a in data.age]),
    }


def labelled_outcomes(data: AttributeSet, detector: Detector) -> tuple[Outcomes, list]:
    """Outcomes of every labelled image, and (image index, central box) of the detected ones."""
    pipeline = _pipeline(detector)
    outcomes, boxes = Outcomes.empty(), []
    for i, image in enumerate(decoded(data.paths)):
        result = pipeline(image)
        k = central_face(result.faces, image.shape)
        centre = (image.shape[1] / 2, image.shape[0] / 2)
        residual = result.ok and not _covered(result, centre)
        outcomes.add(k is not None, residual, not result.ok)
        if k is not None:
            boxes.append((i, result.faces.boxes[k, :4].astype(np.float64)))
    return outcomes, boxes


def _background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth, face-free RGB scene: low-frequency colour noise plus a little grain."""
    h, w = shape
    coarse = rng.uniform(50, 210, (max(2, h // 80), max(2, w // 80), 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Placed:
    """A face pasted into a scene: its known box there (x1, y1, x2, y2)."""

    box: np.ndarray


def _scenes(faces: list[tuple[np.ndarray, np.ndarray]], size: int, config: RecallConfig, rng):
    """Scenes holding every face (chip RGB, its box) rescaled to a ``size``-pixel box width."""
    h, w = config.scene
    scaled = []
    for chip, box in faces:
        factor = size / max(box[2] - box[0], 1.0)
        side = (max(1, round(chip.shape[1] * factor)), max(1, round(chip.shape[0] * factor)))
        scaled.append((cv2.resize(chip, side, interpolation=cv2.INTER_AREA), box * factor))
    cell = max(64, 2 * max(max(c.shape[:2]) for c, _ in scaled))
    cols, rows = max(1, w // cell), max(1, h // cell)
    per_scene = cols * rows
    for start in range(0, len(scaled), per_scene):
        scene, placed = _background((h, w), rng), []
        for j, (chip, box) in enumerate(scaled[start : start + per_scene]):
            ch, cw = chip.shape[:2]
            y0 = (j // cols) * cell + (cell - ch) // 2
            x0 = (j % cols) * cell + (cell - cw) // 2
            if y0 + ch > h or x0 + cw > w:
                continue
            scene[y0 : y0 + ch, x0 : x0 + cw] = chip
            placed.append(Placed(box + np.array([x0, y0, x0, y0], np.float64)))
        yield scene, placed


def small_face_outcomes(
    data: AttributeSet, boxes: list, detector: Detector, config: RecallConfig
) -> list[dict]:
    """Recall and residual faces per face width in ``config.sizes`` on composited scenes."""
    if not boxes or config.small_faces <= 0:
        return []
    step = max(1, len(boxes) // config.small_faces)
    chosen = boxes[::step][: config.small_faces]
    chips = list(decoded([data.paths[i] for i, _ in chosen]))
    faces = [(chip, box) for chip, (_, box) in zip(chips, chosen, strict=True)]
    pipeline, rows = _pipeline(detector), []
    for size in config.sizes:
        rng, outcomes = np.random.default_rng(config.seed + size), Outcomes.empty()
        for scene, placed in _scenes(faces, size, config, rng):
            result = pipeline(scene)
            for p in placed:
                centre = ((p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2)
                residual = result.ok and not _covered(result, centre)
                outcomes.add(matched(result.faces, p.box), residual, not result.ok)
        rows.append({"size_px": size, **outcomes.summary()})
    return rows


def recall_by_group(config: RecallConfig, detector: Detector) -> dict:
    """``by_group`` (gender, race, age band: recall and residual faces) and ``small_faces``
    (per face width) for the labelled set ``config.labels``."""
    data = load_attribute_set(config.labels)
    outcomes, boxes = labelled_outcomes(data, detector)
    by_group = {}
    for kind, labels in _groups(data, config).items():
        by_group[kind] = [
            {"group": str(g), **outcomes.summary(labels == g)} for g in sorted(set(labels))
        ]
    rows = [dict(r, kind=k) for k, group in by_group.items() for r in group if r["n"]]
    lowest = min(rows, key=lambda r: r["recall"]) if rows else None
    small = small_face_outcomes(data, boxes, detector, config)
    log.info("recall per group: lowest %s", lowest)
    return {
        "labels": config.labels,
        "overall": outcomes.summary(),
        "by_group": by_group,
        "lowest_group": lowest,
        "small_faces": small,
    }
