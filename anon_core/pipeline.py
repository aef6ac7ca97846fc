"""``FaceAnonymizer``: decode, detect, anonymize and encode images; no Ray, no disk."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from anon_core import methods
from anon_core.detectors import Detector, build_detector
from anon_core.embeddings import DlibEmbedder, Embedder, InsightFaceEmbedder
from anon_core.faces import Faces
from anon_core.imageio import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    ImageError,
    decode_image,
    encode_image,
)
from anon_core.landmarks import Dlib68, LandmarkModel
from anon_core.methods.base import Anonymizer, MethodOutput
from anon_core.runtime import INFERENCE_ERRORS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnonConfig:
    """Everything that decides an anonymized image; the same config gives the same bytes."""

    method: str = "blur"
    method_options: Mapping[str, object] = field(default_factory=dict)
    detector: str = "centerface"
    model_root: str | None = None
    threshold: float | None = None
    device: str = "cpu"
    threads: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    recognizer: str | None = None  # InsightFace recognition ONNX; None: dlib's embedded ResNet


@dataclass
class AnonResult:
    """The outcome for one image: anonymized bytes and public metadata, or a quarantine reason.

    ``original`` keeps the decoded input in memory so a caller can seal the changed regions; it
    is never part of the public metadata.
    """

    status: str  # "anonymized", "no_face" or "quarantined"
    stage: str = ""
    reason: str = ""
    encoded: bytes = b""
    ext: str = ""
    faces: Faces = field(default_factory=Faces.empty)
    output: MethodOutput | None = None
    original: DecodedImage | None = None

    @property
    def ok(self) -> bool:
        return self.status != "quarantined"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.encoded).hexdigest()

    def metadata(self) -> dict:
        """Public per-sample metadata: size, faces and status; no embeddings, paths or pixels."""
        if not self.ok or self.original is None or self.output is None:
            return {"status": self.status, "stage": self.stage, "reason": self.reason}
        h, w = self.original.rgb.shape[:2]
        pseudonyms = self.output.pseudonyms or (None,) * len(self.faces)
        faces = [
            {
                "bbox": [round(float(v), 1) for v in self.faces.boxes[i, :4]],
                "score": round(float(self.faces.boxes[i, 4]), 4),
                "landmarks5": [round(float(v), 1) for v in self.faces.landmarks5[i]],
                "method": self.output.methods[i],
                "pseudonym": pseudonyms[i],
            }
            for i in range(len(self.faces))
        ]
        return {"width": w, "height": h, "faces": faces, "status": self.status}


def quarantined(stage: str, reason: str) -> AnonResult:
    return AnonResult(status="quarantined", stage=stage, reason=reason)


def build_embedder(config: AnonConfig) -> Embedder:
    """The identity embedder ``config`` asks for: its InsightFace recognizer, else dlib's."""
    if config.recognizer:
        return InsightFaceEmbedder(config.recognizer, config.device, config.threads)
    return DlibEmbedder()


class FaceAnonymizer:
    """Loads the detector and method once; ``__call__`` anonymizes one image, ``batch`` many.

    Fail closed: an image that cannot be decoded, detected or anonymized comes back quarantined
    with its stage and reason, never as output.
    """

    def __init__(
        self,
        config: AnonConfig,
        detector: Detector | None = None,
        method: Anonymizer | None = None,
    ) -> None:
        self.config = config
        self.detector = detector or build_detector(
            config.detector, config.model_root, config.threshold, config.device, config.threads
        )
        self.method = method or methods.create(config.method, **dict(config.method_options))
        self.landmarks: LandmarkModel | None = (
            Dlib68() if getattr(self.method, "needs_landmarks68", False) else None
        )
        self.embedder: Embedder | None = (
            build_embedder(config) if getattr(self.method, "needs_embeddings", False) else None
        )

    def __call__(self, image: bytes | np.ndarray) -> AnonResult:
        return self.batch([image])[0]

    def batch(self, images: Sequence[bytes | np.ndarray]) -> list[AnonResult]:
        decoded: list[DecodedImage | AnonResult] = [self._decode(i) for i in images]
        ready = [i for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        results: list[AnonResult] = [d if isinstance(d, AnonResult) else None for d in decoded]
        try:
            found = self.detector([decoded[i].rgb for i in ready])
        except INFERENCE_ERRORS as exc:
            log.warning("detector failed on a batch of %d: %s", len(ready), type(exc).__name__)
            found = [None] * len(ready)
        if self.landmarks or self.embedder:
            try:
                found = self.prepare_faces([decoded[i].rgb for i in ready], found)
            except (*INFERENCE_ERRORS, TypeError) as exc:
                log.warning("landmarks/embeddings failed on a batch: %s", type(exc).__name__)
                found = [None] * len(ready)
        for i, faces in zip(ready, found, strict=True):
            if faces is None:
                results[i] = self._detect_one(decoded[i])
            else:
                results[i] = self._anonymize(decoded[i], faces)
        return results

    def _decode(self, image: bytes | np.ndarray) -> DecodedImage | AnonResult:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                return quarantined("decode", f"array must be H x W x 3 uint8, got {image.shape}")
            return DecodedImage(np.ascontiguousarray(image), "ARRAY", True, True)
        try:
            return decode_image(image, self.config.max_pixels)
        except ImageError as exc:
            return quarantined("decode", str(exc))
        except MemoryError:
            return quarantined("decode", "out of memory while decoding")

    def _detect_one(self, image: DecodedImage) -> AnonResult:
        try:
            faces = self.detector([image.rgb])[0]
        except INFERENCE_ERRORS as exc:
            return quarantined("detect", f"detector failed ({type(exc).__name__})")
        try:
            faces = self.prepare_faces([image.rgb], [faces])[0]
        except (*INFERENCE_ERRORS, TypeError) as exc:
            return quarantined("landmarks", f"landmarks/embeddings failed ({type(exc).__name__})")
        return self._anonymize(image, faces)

    def prepare_faces(
        self, images: Sequence[np.ndarray], found: Sequence[Faces | None]
    ) -> list[Faces | None]:
        """The batched face stage: fill landmarks68, extras['reliable'], embeddings and
        extras['embedder'] when the method needs them. Entries that are None (detection failed)
        stay None."""
        todo = [i for i, f in enumerate(found) if f is not None and len(f)]
        if not todo or (self.landmarks is None and self.embedder is None):
            return list(found)
        rgb = [images[i] for i in todo]
        faces = [found[i] for i in todo]
        if self.landmarks is not None:
            faces = self.landmarks(rgb, faces)
        if self.embedder is not None:
            vectors = self.embedder(rgb, faces)
            extras = {"embedder": self.embedder.name}
            faces = [
                replace(f, embeddings=v, extras={**f.extras, **extras})
                for f, v in zip(faces, vectors, strict=True)
            ]
        out = list(found)
        for i, f in zip(todo, faces, strict=True):
            out[i] = f
        return out

    def _anonymize(self, image: DecodedImage, faces: Faces) -> AnonResult:
        try:
            output = self.method(image.rgb, faces)
            encoded = encode_image(output.image, image.output_ext)
        except INFERENCE_ERRORS as exc:
            return quarantined("anonymize", f"{self.method.name} failed ({type(exc).__name__})")
        if len(output.methods) != len(faces):
            return quarantined("anonymize", "method did not account for every face")
        status = "anonymized" if len(faces) else "no_face"
        return AnonResult(status, "", "", encoded, image.output_ext, faces, output, image)
