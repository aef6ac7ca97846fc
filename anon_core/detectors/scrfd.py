"""InsightFace SCRFD detectors loaded from a user's model directory (weights never bundled)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from faceveil.anon_core.faces import Faces
from faceveil.anon_core.runtime import make_session

DEFAULT_FILES = ("scrfd_2.5g_bnkps.onnx", "det_500m.onnx", "det_10g.onnx", "det_2.5g.onnx")


def find_model(model_root: str | Path, name: str | None = None) -> Path:
    """The SCRFD file ``name`` in ``model_root``, or the first of the known names found there."""
    root = Path(model_root).expanduser()
    candidates = [name] if name else list(DEFAULT_FILES)
    for candidate in candidates:
        path = root / candidate
        if path.is_file():
            return path
    raise FileNotFoundError(f"no SCRFD model ({', '.join(candidates)}) in {root}")


class SCRFD:
    """SCRFD with 5 keypoints through insightface, at the image's own size (rounded up to 32)."""

    name = "scrfd"

    def __init__(
        self,
        model_root: str | Path,
        model_name: str | None = None,
        threshold: float = 0.3,
        device: str = "cpu",
        threads: int = 0,
    ) -> None:
        from insightface.model_zoo.scrfd import SCRFD as _InsightSCRFD

        path = find_model(model_root, model_name)
        session = make_session(str(path), device, threads)
        self.model = _InsightSCRFD(model_file=str(path), session=session)
        self.model.prepare(ctx_id=0 if device == "cuda" else -1, det_thresh=threshold)
        self.threshold = threshold
        self.model_path = path

    def __call__(self, images: Sequence[np.ndarray]) -> list[Faces]:
        return [self._one(image) for image in images]

    def _one(self, image: np.ndarray) -> Faces:
        h, w = image.shape[:2]
        size = (-(-w // 32) * 32, -(-h // 32) * 32)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        boxes, points = self.model.detect(bgr, input_size=size, det_thresh=self.threshold)
        if boxes is None or len(boxes) == 0:
            return Faces.empty()
        if points is None:
            raise RuntimeError(f"{self.model_path.name} gives no keypoints; use a *_kps model")
        boxes = boxes.astype(np.float32)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        return Faces(boxes, points.reshape(-1, 10).astype(np.float32))
