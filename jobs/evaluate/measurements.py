"""What an evaluation measures per sample: the pass over the originals and each method's run
(filled by ``runner``, read by ``figures``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from faceveil.anon_core.faces import Faces
from faceveil.jobs.evaluate.attacks import AttackPlan
from faceveil.jobs.evaluate.config import EvalConfig
from faceveil.jobs.evaluate.dataset import LabelledSet
from faceveil.jobs.evaluate.methods import MethodContext
from faceveil.jobs.evaluate.models import EvalModels


@dataclass
class Originals:
    """What the pass over the unmodified images found, per sample (index as in the set)."""

    faces: list[Faces]
    central: list[int | None]
    guides: dict[str, list[np.ndarray | None]]
    embeddings: dict[str, np.ndarray]
    points68: list[np.ndarray | None]
    redetected: np.ndarray
    ids: np.ndarray
    gallery: np.ndarray
    attribute_rows: np.ndarray
    # the pixel inversion's face crops (N x S x S x 3) and their 2 x 3 crop transforms
    crops: np.ndarray | None = None
    crop_matrices: np.ndarray | None = None
    # the fine-tuned parrot's 112 x 112 crops per ONNX recognizer (name -> N x 112 x 112 x 3),
    # that recognizer's model file, and its frozen trunk's activations of these crops
    faces112: dict[str, np.ndarray] = field(default_factory=dict)
    model_paths: dict[str, str] = field(default_factory=dict)
    trunk_cache: dict = field(default_factory=dict)

    @property
    def has_face(self) -> np.ndarray:
        return np.array([k is not None for k in self.central])


@dataclass
class MethodRun:
    """Per-sample measurements of one method (NaN / False where not measured)."""

    embeddings: dict[str, np.ndarray]
    valid: np.ndarray
    redetected: np.ndarray
    landmark_error: np.ndarray
    ssim_method: np.ndarray
    ssim_encoded: np.ndarray
    central_method: np.ndarray  # the method applied to each image's central face ("" if none)
    statuses: Counter = field(default_factory=Counter)
    applied: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    # for the pixel inversion: anonymized crops at the original's transform, encoded outputs
    crops: np.ndarray | None = None
    encoded: dict[int, bytes] = field(default_factory=dict)
    # for the fine-tuned parrot: anonymized 112 x 112 crops per ONNX recognizer
    faces112: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class EvalSession:
    """What every method row of one run shares: the set, the pass over its originals, the
    models, the config, one method context (one key, one surrogate first pass), the attack
    plan (one identity split, one budget) and the example thumbnails collected so far."""

    data: LabelledSet
    originals: Originals
    models: EvalModels
    config: EvalConfig
    context: MethodContext
    plan: AttackPlan
    examples: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
