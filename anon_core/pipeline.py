"""``FaceAnonymizer``: decode, detect, anonymize and encode images; no Ray, no disk."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from faceveil.anon_core.config import AnonConfig
from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.embeddings import DlibEmbedder, Embedder, InsightFaceEmbedder
from faceveil.anon_core.faces import Faces, one_per_face
from faceveil.anon_core.imageio import (
    DecodedImage,
    ImageError,
    decode_image,
    encode_image,
)
from faceveil.anon_core.known import WithBoxes, join_known, to_pixels
from faceveil.anon_core.landmarks import Dlib68, LandmarkModel
from faceveil.anon_core.methods.base import Anonymizer, MethodOutput
from faceveil.anon_core.prefetch import Prefetcher
from faceveil.anon_core.results import AnonResult, SampleStatus, quarantined
from faceveil.anon_core.runtime import INFERENCE_ERRORS
from faceveil.anon_core.stage import CpuStage, Stage

log = logging.getLogger(__name__)


@dataclass
class Staged:
    """One image after the stage, waiting to be encoded."""

    image: DecodedImage
    faces: Faces
    output: MethodOutput


def build_embedder(config: AnonConfig) -> Embedder:
    """The identity embedder ``config`` asks for: its InsightFace recognizer, else dlib's."""
    if config.recognizer:
        return InsightFaceEmbedder(config.recognizer, config.device, config.threads)
    return DlibEmbedder(config.threads)


class FaceAnonymizer:
    """Loads the models once; ``__call__`` anonymizes one image, ``batch`` many, ``map`` a stream
    of batches.

    Detection and the method run in ``stage``: ``CpuStage`` (built from ``detector`` and
    ``method``) by default, or another such as ``anon_core.accel.AcceleratedStage``. Decoding,
    the face stage (landmarks, embeddings), quarantine and encoding are done here, the same for
    every stage; ``decode``, ``process`` and ``finish`` are the three steps ``Prefetcher``
    overlaps when the stage asks for worker threads. Fail closed: an image that cannot be
    decoded, detected or anonymized comes back quarantined with its stage and reason, never as
    output.
    """

    def __init__(
        self,
        config: AnonConfig,
        detector: Detector | None = None,
        method: Anonymizer | None = None,
        stage: Stage | None = None,
    ) -> None:
        if stage is not None and (detector is not None or method is not None):
            raise ValueError("give the detector and method to the stage, not next to it")
        self.config = config
        self.stage = stage or CpuStage(config, detector, method)
        self.landmarks: LandmarkModel | None = (
            Dlib68() if getattr(self.method, "needs_landmarks68", False) else None
        )
        self.embedder: Embedder | None = (
            build_embedder(config) if getattr(self.method, "needs_embeddings", False) else None
        )
        self._pool: ThreadPoolExecutor | None = None

    @property
    def detector(self) -> Detector:
        return self.stage.detector

    @property
    def method(self) -> Anonymizer:
        return self.stage.method

    def __call__(self, image: bytes | np.ndarray | WithBoxes) -> AnonResult:
        return self.batch([image])[0]

    def batch(self, images: Sequence[bytes | np.ndarray | WithBoxes]) -> list[AnonResult]:
        """One result per image, in order."""
        if not self.stage.workers:
            return [self.finish(s) for s in self.process([self.decode(i) for i in images])]
        return next(Prefetcher(self, pool=self.pool()).map([images]))

    def map(self, windows: Iterable[Sequence[bytes | np.ndarray]]) -> Iterator[list[AnonResult]]:
        """Results per window; with stage workers, decode and encode overlap the stage."""
        if not self.stage.workers:
            yield from (self.batch(window) for window in windows)
            return
        yield from Prefetcher(self, pool=self.pool()).map(windows)

    def pool(self) -> ThreadPoolExecutor:
        """The decode/encode thread pool of a stage with workers, started on first use."""
        if self._pool is None:
            workers = max(1, self.stage.workers)
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="faceveil-io")
        return self._pool

    def close(self) -> None:
        """Stop the thread pool (a later call starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def decode(self, image: bytes | np.ndarray | WithBoxes) -> DecodedImage | AnonResult:
        """Bytes or an RGB array to pixels, or a quarantined result. A ``WithBoxes`` image
        keeps its known boxes (in pixels) for ``process``, which joins them to the detections."""
        if isinstance(image, WithBoxes):
            decoded = self.decode(image.image)
            if isinstance(decoded, AnonResult):
                return decoded
            return replace(decoded, known=to_pixels(image, decoded.rgb.shape))
        if isinstance(image, bytes):
            decoded = self.stage.decode(image, self.config.max_pixels)
            if decoded is not None:
                return decoded
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

    def process(self, decoded: Sequence[DecodedImage | AnonResult]) -> list[Staged | AnonResult]:
        """Detect, prepare and anonymize every decoded image, in the stage's groups."""
        out: list[Staged | AnonResult] = list(decoded)
        ready = [i for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        for group in self.stage.groups([decoded[i].rgb.shape for i in ready]):
            members = [ready[k] for k in group]
            for i, result in zip(members, self._run([decoded[i] for i in members]), strict=True):
                out[i] = result
        return out

    def finish(self, staged: Staged | AnonResult) -> AnonResult:
        """Encode, with no metadata, as ``config.image_format`` (default: the input's kind)."""
        if isinstance(staged, AnonResult):
            return staged
        image, output = staged.image, staged.output
        ext = self.config.image_format or image.output_ext
        try:
            encoded = self.stage.encode(output.image, ext)
            encoded = encoded or encode_image(output.image, ext)
        except INFERENCE_ERRORS as exc:
            return quarantined("anonymize", f"{self.method.name} failed ({type(exc).__name__})")
        status = SampleStatus.ANONYMIZED if len(staged.faces) else SampleStatus.NO_FACE
        return AnonResult(status, "", "", encoded, ext, staged.faces, output, image)

    def _run(self, images: list[DecodedImage]) -> list[Staged | AnonResult]:
        """One group through the stage; a failing group is retried image by image."""
        rgb = [d.rgb for d in images]
        try:
            batch = self.stage.load(rgb)
            found = self.stage.detect(batch, rgb)
        except INFERENCE_ERRORS as exc:
            return self._retry(images, "detect", exc)
        found = [join_known(f, d.known) for f, d in zip(found, images, strict=True)]
        try:
            found = self.prepare_faces(rgb, found)
        except (*INFERENCE_ERRORS, TypeError) as exc:
            return self._retry(images, "landmarks", exc)
        try:
            outputs = self.stage.anonymize(batch, rgb, found)
        except INFERENCE_ERRORS as exc:
            return self._retry(images, "anonymize", exc)
        return [
            Staged(d, f, o)
            if len(o.methods) == len(f)
            else quarantined("anonymize", "method did not account for every face")
            for d, f, o in zip(images, found, outputs, strict=True)
        ]

    def _retry(
        self, images: list[DecodedImage], step: str, exc: BaseException
    ) -> list[Staged | AnonResult]:
        """Each image of a failed group alone; a single image that fails is quarantined."""
        where = self.stage.where(step)
        on = f" on {where}" if where else ""
        log.warning("%s failed%s on %d images: %s", step, on, len(images), type(exc).__name__)
        if len(images) > 1:
            return [r for d in images for r in self._run([d])]
        name = {"detect": "detector", "landmarks": "landmarks/embeddings"}.get(step)
        return [quarantined(step, f"{name or self.method.name} failed{on} ({type(exc).__name__})")]

    def prepare_faces(self, images: Sequence[np.ndarray], found: Sequence[Faces]) -> list[Faces]:
        """The batched face stage, before any method runs: fill landmarks68 and
        extras['reliable'] when the method needs them, merge the detections of one face
        (``one_per_face``: a face detected twice gets one region, one surrogate or one mask),
        then fill embeddings and extras['embedder'] when the method needs them."""
        todo = [i for i, f in enumerate(found) if len(f)]
        if not todo:
            return list(found)
        rgb = [images[i] for i in todo]
        faces = [found[i] for i in todo]
        if self.landmarks is not None:
            faces = self.landmarks(rgb, faces)
        faces = [one_per_face(f) for f in faces]
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
