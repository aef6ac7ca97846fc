"""Face work of one pass over an image kept for the next pass over the same image.

``FaceMemo`` wraps a detector, a landmark model and an embedder. Each wrapped model looks its
answer up in ``FaceRecords`` before computing it, and stores what it computed when the memo
keeps. Answers are keyed by the image's pixels (SHA-256 of shape and bytes) and, for the
per-face models, by the faces they were asked about (boxes and five points), so a record is only
used for exactly the input that produced it; anything else is computed as usual. No Ray, no
disk: records hold biometric data (landmarks, embeddings), so a job seals them before they leave
the process that made them.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.embeddings import Embedder
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.landmarks import LandmarkModel
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer

PARTS = ("detect", "landmarks", "embed")


def pixel_digest(image: np.ndarray) -> bytes:
    """SHA-256 of an image's shape, dtype and pixels."""
    h = hashlib.sha256(f"{image.shape}|{image.dtype}|".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.digest()


def faces_key(digest: bytes, faces: Faces) -> bytes:
    """The key of a per-face model's answer: the image's digest and the faces asked about."""
    h = hashlib.sha256(digest)
    h.update(np.ascontiguousarray(faces.boxes, np.float32).tobytes())
    h.update(np.ascontiguousarray(faces.landmarks5, np.float32).tobytes())
    return h.digest()


@dataclass(repr=False)
class FaceRecords:
    """What the models answered for some images: ``detections`` (pixel digest -> the
    detector's Faces), ``landmarks`` (faces key -> 68 points and reliability flags) and
    ``embeddings`` (faces key -> N x D). ``models`` names the models and settings that made
    them; a memo for other models ignores the records."""

    models: str = ""
    detections: dict[bytes, Faces] = field(default_factory=dict)
    landmarks: dict[bytes, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    embeddings: dict[bytes, np.ndarray] = field(default_factory=dict)

    def part(self, name: str) -> dict:
        return {"detect": self.detections, "landmarks": self.landmarks, "embed": self.embeddings}[
            name
        ]

    def __len__(self) -> int:
        return len(self.detections)

    def __repr__(self) -> str:  # counts only: no digest, no landmark, no embedding
        return f"FaceRecords({len(self)} images, {len(self.embeddings)} embedded)"


@dataclass
class MemoCounts:
    """Images whose answer came from the records (``reused``) or from the model
    (``computed``), per part ('detect', 'landmarks', 'embed')."""

    reused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))
    computed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))


class _Digests:
    """Pixel digests of the images in use, each computed once: the three models of one batch
    get the same array objects. An entry lives as long as its array (a weak reference), so an
    id is never taken for another array's."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[weakref.ref, bytes]] = {}

    def __call__(self, image: np.ndarray) -> bytes:
        key = id(image)
        known = self._known.get(key)
        if known is not None and known[0]() is image:
            return known[1]
        digest = pixel_digest(image)
        ref = weakref.ref(image, lambda _, k=key: self._known.pop(k, None))
        self._known[key] = (ref, digest)
        return digest


class FaceMemo:
    """Wraps models so that they answer from ``records`` where the records hold exactly their
    input, and compute (and, when ``keep``, store) everything else. ``use`` swaps in another
    set of records (None: none) and clears the counts."""

    def __init__(self, records: FaceRecords | None = None, keep: bool = False) -> None:
        self.records = records if records is not None else FaceRecords()
        self.keep = keep
        self.counts = MemoCounts()
        self._digest = _Digests()

    def use(self, records: FaceRecords | None) -> None:
        self.records = records if records is not None else FaceRecords()
        self.counts = MemoCounts()

    def detector(self, model: Detector) -> Detector:
        return _Detector(self, model)

    def landmarks(self, model: LandmarkModel) -> LandmarkModel:
        return _Landmarks(self, model)

    def embedder(self, model: Embedder) -> Embedder:
        return _Embedder(self, model)

    def anonymizer(self, config: AnonConfig, detector: Detector, method) -> FaceAnonymizer:
        """A ``FaceAnonymizer`` of ``method`` whose detector, landmark model and embedder all
        answer through this memo (the surrogate's second pass)."""
        anonymizer = FaceAnonymizer(config, detector=self.detector(detector), method=method)
        if anonymizer.landmarks is not None:
            anonymizer.landmarks = self.landmarks(anonymizer.landmarks)
        if anonymizer.embedder is not None:
            anonymizer.embedder = self.embedder(anonymizer.embedder)
        return anonymizer

    def answers(self, part: str, keys: list[bytes], compute: Callable[[list[int]], list]) -> list:
        """The stored answer for each key, and ``compute(missing indices)`` for the others."""
        stored = self.records.part(part)
        missing = [k for k, key in enumerate(keys) if key not in stored]
        found = dict(zip(missing, compute(missing), strict=True)) if missing else {}
        self.counts.reused[part] += len(keys) - len(missing)
        self.counts.computed[part] += len(missing)
        if self.keep:
            stored.update({keys[k]: _stored(part, found[k]) for k in missing})
        return [found[k] if k in found else stored[key] for k, key in enumerate(keys)]

    def digest(self, image: np.ndarray) -> bytes:
        return self._digest(image)


class _Detector:
    """A detector behind a memo, keyed by the image alone."""

    def __init__(self, memo: FaceMemo, model: Detector) -> None:
        self.memo, self.model, self.name = memo, model, model.name

    def __call__(self, images: Sequence[np.ndarray]) -> list[Faces]:
        keys = [self.memo.digest(image) for image in images]
        return self.memo.answers("detect", keys, lambda todo: self.model([images[k] for k in todo]))


class _PerFace:
    """A per-face model (landmarks, embedder) behind a memo, keyed by the image and its faces."""

    part = ""

    def __init__(self, memo: FaceMemo, model) -> None:
        self.memo, self.model, self.name = memo, model, model.name

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence[Faces]) -> list:
        keys = [faces_key(self.memo.digest(i), f) for i, f in zip(images, faces, strict=True)]
        return self.memo.answers(
            self.part,
            keys,
            lambda todo: self.model([images[k] for k in todo], [faces[k] for k in todo]),
        )


class _Landmarks(_PerFace):
    part = "landmarks"

    def __call__(self, images: Sequence[np.ndarray], faces: Sequence[Faces]) -> list[Faces]:
        answers = super().__call__(images, faces)
        return [a if isinstance(a, Faces) else _filled(f, a) for f, a in
                zip(faces, answers, strict=True)]  # fmt: skip


class _Embedder(_PerFace):
    part = "embed"

    def __init__(self, memo: FaceMemo, model: Embedder) -> None:
        super().__init__(memo, model)
        self.dim = model.dim


def _stored(part: str, answer):
    """What the records keep of a model's answer: a landmark model's 68 points and flags (the
    faces they fill are the ones the key names), the rest as they are."""
    if part != "landmarks":
        return answer
    return answer.landmarks68, np.asarray(answer.extras["reliable"], bool)


def _filled(faces: Faces, kept: tuple[np.ndarray, np.ndarray]) -> Faces:
    """``faces`` with the stored 68 points and reliability flags, as the landmark model fills
    them (``LandmarkModel``)."""
    points, reliable = kept
    return replace(faces, landmarks68=points, extras={**faces.extras, "reliable": reliable})
