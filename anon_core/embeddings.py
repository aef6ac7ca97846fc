"""Identity embeddings behind one protocol: dlib's ResNet (embedded) or an InsightFace model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from faceveil.anon_core.dlibnet import DlibResNet
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.models import dlib_model
from faceveil.anon_core.runtime import make_session


@runtime_checkable
class Embedder(Protocol):
    """L2-normalised identity embeddings, one N x dim array per image (0 x dim when no face)."""

    name: str
    dim: int

    def __call__(
        self, images: Sequence[np.ndarray], faces: Sequence[Faces]
    ) -> list[np.ndarray]: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class DlibEmbedder:
    """dlib's ResNet 128-d recognizer, aligned by its 5-point shape predictor inside each box.

    The network runs in onnxruntime (``anon_core.dlibnet``) with ``threads`` intra-op threads
    (0: onnxruntime decides), about 12 times faster than dlib's own kernels, and gives dlib's
    descriptors to within 1e-6.
    """

    name = "dlib_resnet"
    dim = 128

    def __init__(self, threads: int = 1) -> None:
        import dlib

        self._dlib = dlib
        self.shape = dlib.shape_predictor(str(dlib_model("shape_predictor_5_face_landmarks.dat")))
        self.net = DlibResNet(threads)

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence[Faces]) -> list[np.ndarray]:
        out = []
        for image, f in zip(images, faces, strict=True):
            image = np.ascontiguousarray(image)
            shapes = [
                self.shape(image, self._dlib.rectangle(int(x1), int(y1), int(x2), int(y2)))
                for x1, y1, x2, y2, _ in f.boxes
            ]
            out.append(_normalise(self.net.describe(image, shapes)))
        return out


# Where ArcFace-family recognizers expect the five points in their 112 x 112 input.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)


def align_112(image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
    """The 112 x 112 ArcFace-aligned crop (RGB) for one face's five points (length 10)."""
    src = np.asarray(landmarks5, np.float32).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(src, ARCFACE_112, method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("landmarks are degenerate; no similarity transform fits them")
    return cv2.warpAffine(image, matrix, (112, 112), borderValue=0.0)


class InsightFaceEmbedder:
    """An InsightFace recognition ONNX (ArcFace-style 112 x 112 input), batched over all faces."""

    name = "insightface"

    def __init__(self, model_path: str | Path, device: str = "cpu", threads: int = 0) -> None:
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        self.model_path = Path(model_path)
        session = make_session(str(self.model_path), device, threads)
        self.model = ArcFaceONNX(model_file=str(self.model_path), session=session)
        batch = session.get_inputs()[0].shape[0]
        self.batch = batch if isinstance(batch, int) and batch > 0 else 0
        self.dim = int(self.model.get_feat([np.zeros((112, 112, 3), np.uint8)]).shape[1])

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence[Faces]) -> list[np.ndarray]:
        crops = self.aligned_crops(images, faces)
        feats = self.embed_crops(crops) if crops else np.zeros((0, self.dim), np.float32)
        out, start = [], 0
        for f in faces:
            out.append(feats[start : start + len(f)])
            start += len(f)
        return out

    @staticmethod
    def aligned_crops(images: Sequence[np.ndarray], faces: Sequence[Faces]) -> list[np.ndarray]:
        return [
            align_112(im, lm) for im, f in zip(images, faces, strict=True) for lm in f.landmarks5
        ]

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings of RGB 112 x 112 aligned crops (the model itself takes BGR)."""
        bgr = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops]
        step = self.batch or len(bgr)
        parts = [self.model.get_feat(bgr[i : i + step]) for i in range(0, len(bgr), step)]
        return _normalise(np.concatenate(parts).astype(np.float32))
