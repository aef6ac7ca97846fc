"""Optional attribute probes (gender, age) on identity embeddings, fitted at run time.

A probe is a linear model of a few hundred floats over the embedder's output: logistic for a
binary attribute (gender), ridge for a value (age). Nothing is bundled: a user who has labelled
faces of their own fits probes with ``fit_probes`` before the first pass, and donors then
come only from the original's side of each binary attribute and within ``tolerance`` of each
value. Without probes, gender and age are kept only as far as the embedding neighbourhood and
skin tone carry them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.embeddings import Embedder
from faceveil.anon_core.landmarks import LandmarkModel

log = logging.getLogger(__name__)

BINARY, VALUE = "binary", "value"
GENDER_TOLERANCE = 0.25  # donors' P(female) at least this far from 0.5 on the original's side
AGE_TOLERANCE = 15.0  # years between a donor's predicted age and the original's
L2 = 1.0  # ridge / L2 penalty on the weights (not the bias) of every probe


@dataclass(frozen=True)
class LinearAttribute:
    """``kind`` 'binary': P(label 1) = sigmoid(w . e + b); 'value': w . e + b. ``embedder``
    names the embedder it was fitted on; ``tolerance`` bounds the donor-to-original gap of a
    value (a binary attribute must simply agree)."""

    name: str
    kind: str
    weights: np.ndarray
    bias: float
    embedder: str
    tolerance: float = 0.0

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        z = np.asarray(embeddings, np.float64) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-z)) if self.kind == BINARY else z

    def compatible(self, original: float, donors: np.ndarray) -> np.ndarray:
        """Which donor predictions are compatible with the original's: for a binary attribute,
        donors confidently (beyond ``tolerance`` from 0.5) on the original's side."""
        if self.kind == BINARY:
            side = 1.0 if original >= 0.5 else -1.0
            return side * (donors - 0.5) >= self.tolerance
        return np.abs(donors - original) <= self.tolerance


def _design(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, np.float64)
    return np.hstack([x, np.ones((len(x), 1))])


def fit_binary(
    name: str,
    embeddings: np.ndarray,
    labels: np.ndarray,
    embedder: str,
    tolerance: float = 0.25,
) -> LinearAttribute:
    """Logistic regression (Newton's method, L2 penalty on the weights), deterministic."""
    x = _design(embeddings)
    y = np.asarray(labels, np.float64).reshape(-1)
    if len(x) != len(y) or not set(np.unique(y)) <= {0.0, 1.0} or len(np.unique(y)) < 2:
        raise ValueError("binary attribute needs one 0/1 label per embedding, both present")
    penalty = np.eye(x.shape[1]) * L2
    penalty[-1, -1] = 0.0
    beta = np.zeros(x.shape[1])
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) + penalty @ beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    accuracy = float(np.mean(((x @ beta) > 0) == (y > 0.5)))
    log.info("attribute %s fitted on %d faces (training accuracy %.3f)", name, len(y), accuracy)
    return LinearAttribute(name, BINARY, beta[:-1].copy(), float(beta[-1]), embedder, tolerance)


def fit_value(
    name: str,
    embeddings: np.ndarray,
    values: np.ndarray,
    embedder: str,
    tolerance: float,
) -> LinearAttribute:
    """Ridge regression of a value (such as age in years) on embeddings."""
    x = _design(embeddings)
    y = np.asarray(values, np.float64).reshape(-1)
    if len(x) != len(y) or len(y) < 2:
        raise ValueError("value attribute needs one value per embedding")
    penalty = np.eye(x.shape[1]) * L2
    penalty[-1, -1] = 0.0
    beta = np.linalg.solve(x.T @ x + penalty, x.T @ y)
    return LinearAttribute(name, VALUE, beta[:-1].copy(), float(beta[-1]), embedder, tolerance)


def embed_labelled(
    samples: Iterable[tuple[np.ndarray, float]],
    detector: Detector,
    landmarks: LandmarkModel,
    embedder: Embedder,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and labels of labelled face photos (RGB, label): the largest reliable face
    of each photo; photos without one are skipped."""
    embs, labels = [], []
    for image, label in samples:
        faces = landmarks([image], detector([image]))[0]
        reliable = np.asarray(faces.extras.get("reliable", np.zeros(len(faces))), bool)
        if not reliable.any():
            continue
        area = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
        best = int(np.argmax(np.where(reliable, area, -1)))
        embs.append(embedder([image], [faces.select(np.array([best]))])[0][0])
        labels.append(label)
    if not embs:
        raise ValueError("no usable face in the labelled photos")
    return np.asarray(embs, np.float32), np.asarray(labels, np.float64)


def fit_probes(
    embeddings: np.ndarray, gender: np.ndarray, age: np.ndarray | None, embedder: str
) -> tuple[LinearAttribute, ...]:
    """The donor-selection probes from labelled embeddings: gender (0 male, 1 female) and,
    when given, age in years."""
    probes = [fit_binary("gender", embeddings, gender, embedder, GENDER_TOLERANCE)]
    if age is not None:
        probes.append(fit_value("age", embeddings, age, embedder, AGE_TOLERANCE))
    return tuple(probes)
