"""Re-identification attackers that align an anonymized face by the ORIGINAL's landmarks.

Worst case for the anonymizer: the attacker knows exactly where the face was. ``guide`` is
computed once on the original; ``embed`` crops any image (original or anonymized) with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from faceveil.anon_core.dlibnet import DlibResNet
from faceveil.anon_core.embeddings import DlibEmbedder, InsightFaceEmbedder, align_112
from faceveil.anon_core.models import dlib_model, sha256_file

log = logging.getLogger(__name__)


@runtime_checkable
class Attacker(Protocol):
    """A recognizer with alignment fixed by the original face."""

    name: str
    info: dict

    def guide(self, image: np.ndarray, box: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        """Alignment data for one face, from the original image."""
        ...

    def embed(self, images: Sequence[np.ndarray], guides: Sequence[np.ndarray]) -> np.ndarray:
        """N x D L2-normalised embeddings, image i cropped with guide i."""
        ...


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class OnnxAttacker:
    """Any InsightFace-compatible recognition ONNX on the ArcFace 112 x 112 crop."""

    def __init__(self, model_path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        path = Path(model_path)
        self.embedder = InsightFaceEmbedder(path, device, threads)
        self.name = path.name
        self.info = {
            "name": path.name,
            "kind": "insightface-onnx",
            "sha256": sha256_file(str(path)),
        }

    def guide(self, image: np.ndarray, box: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        return np.asarray(landmarks5, np.float32).reshape(10).copy()

    def embed(self, images: Sequence[np.ndarray], guides: Sequence[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.embedder.dim), np.float32)
        crops = [align_112(im, g) for im, g in zip(images, guides, strict=True)]
        return self.embedder.embed_crops(crops)


class DlibAttacker:
    """dlib's ResNet recognizer; its 5-point shape is fitted on the original and reused."""

    name = "dlib_resnet"

    def __init__(self, threads: int = 1) -> None:
        import dlib

        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(dlib_model("shape_predictor_5_face_landmarks.dat")))
        self._net = DlibResNet(threads)
        self.info = {"name": self.name, "kind": "dlib", "sha256": sha256_file(str(self._net.path))}

    def guide(self, image: np.ndarray, box: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        rect = self._dlib.rectangle(*(int(v) for v in box[:4]))
        shape = self._shape(np.ascontiguousarray(image), rect)
        points = [v for p in shape.parts() for v in (p.x, p.y)]
        return np.asarray([*(int(v) for v in box[:4]), *points], np.float32)

    def embed(self, images: Sequence[np.ndarray], guides: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(images), 128), np.float32)
        for i, (image, g) in enumerate(zip(images, guides, strict=True)):
            rect = self._dlib.rectangle(*(int(v) for v in g[:4]))
            parts = [self._dlib.point(int(x), int(y)) for x, y in g[4:].reshape(-1, 2)]
            out[i] = self._net.describe(image, [self._dlib.full_object_detection(rect, parts)])[0]
        return _normalise(out)


def build_attackers(
    model_paths: Sequence[str | Path], device: str = "cpu", threads: int = 0
) -> list[Attacker]:
    """One attacker per recognition ONNX; dlib's recognizer when none is given."""
    if not model_paths:
        log.info("no attacker model given: using dlib's ResNet recognizer")
        return [DlibAttacker(threads)]
    return [OnnxAttacker(p, device, threads) for p in model_paths]


def _model_fingerprints(obj: object, depth: int = 2) -> set[str]:
    """sha256 of recognition models an anonymizer holds (looked up in its attributes)."""
    if isinstance(obj, InsightFaceEmbedder):
        return {sha256_file(str(obj.model_path))}
    if isinstance(obj, DlibEmbedder):
        return {sha256_file(str(dlib_model("dlib_face_recognition_resnet_model_v1.dat")))}
    if depth == 0 or not hasattr(obj, "__dict__"):
        return set()
    found: set[str] = set()
    for value in vars(obj).values():
        found |= _model_fingerprints(value, depth - 1)
    return found


def warn_if_same_model(attacker: Attacker, anonymizer: object, label: str) -> bool:
    """Log a warning when ``attacker`` is the recognizer the anonymizer itself uses: such an
    attacker is the one the method was optimised against, so its figures flatter the method."""
    same = attacker.info["sha256"] in _model_fingerprints(anonymizer)
    if same:
        log.warning(
            "attacker %s is the recognition model the %s anonymizer uses itself; "
            "use an independent attacker model for a fair privacy figure",
            attacker.name,
            label,
        )
    return same
