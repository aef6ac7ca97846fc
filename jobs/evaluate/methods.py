"""How each evaluated method is built: from the production registry (``anon_core.methods``), the
surrogate through ``anon_core.surrogate.build`` after a first pass over the originals, plus the
eval-only ``identity`` no-op that shows the metrics can fail."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from faceveil.anon_core import methods
from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.embeddings import Embedder
from faceveil.anon_core.facememo import FaceMemo
from faceveil.anon_core.faces import Faces, face_regions
from faceveil.anon_core.landmarks import Dlib68, LandmarkModel
from faceveil.anon_core.methods.base import Anonymizer, MethodOutput
from faceveil.anon_core.pipeline import AnonConfig, build_embedder
from faceveil.jobs.evaluate.config import MethodSpec

log = logging.getLogger(__name__)


class MethodUnavailable(RuntimeError):
    """The method cannot be built here (not installed yet, missing model); reported, not fatal."""


@dataclass(frozen=True)
class MethodContext:
    """What a method may need beyond its options.

    ``originals`` yields (sample id, RGB image) over the labelled set, for methods that need a
    first pass over the data (surrogate donors and identity clusters); ``detector`` is the one
    the evaluation anonymizes with; ``key`` an ephemeral per-run key for key-driven methods.
    """

    originals: Callable[[], Iterator[tuple[str, np.ndarray]]]
    key: bytes
    detector: Detector | None = None
    model_root: str | None = None
    device: str = "cpu"
    threads: int = 0
    memo: dict = field(default_factory=dict, compare=False)  # first passes, probes: per run


def build_method(spec: MethodSpec, context: MethodContext) -> Anonymizer:
    """The anonymizer for ``spec`` from the registry (the surrogate after its first pass, the
    eval-only ``identity`` apart); raises MethodUnavailable when it cannot be built here."""
    if spec.name == "identity":
        if spec.options:
            raise ValueError("the identity method takes no options")
        return IdentityMethod()
    if spec.name not in methods.available():
        raise MethodUnavailable(f"no method {spec.name!r} (have {methods.available()})")
    if spec.name == "surrogate":
        return _surrogate(spec, context)
    return methods.create(spec.name, **dict(spec.options))


def eval_method_names() -> list[str]:
    """Every name ``build_method`` may accept (the registry's and ``identity``)."""
    return sorted({*methods.available(), "identity"})


class IdentityMethod:
    """A no-op "anonymizer" for evaluation only: the baseline every privacy metric must flag."""

    name = "identity"
    needs_landmarks68 = False
    needs_embeddings = False

    def __call__(self, image: np.ndarray, faces: Faces) -> MethodOutput:
        regions = face_regions(faces, image.shape)
        n = len(faces)
        return MethodOutput(image.copy(), regions, (self.name,) * n, (None,) * n)


class WithFaceDetails:
    """Fills ``landmarks68`` and ``embeddings`` of the faces before calling ``method`` when the
    caller did not (a method that needs them must get them from somewhere in evaluation)."""

    def __init__(self, method: Anonymizer, landmarks: LandmarkModel, embedder: Embedder) -> None:
        self.method = method
        self.landmarks = landmarks
        self.embedder = embedder
        self.name = method.name
        self.needs_landmarks68 = method.needs_landmarks68
        self.needs_embeddings = method.needs_embeddings

    def __call__(self, image: np.ndarray, faces: Faces) -> MethodOutput:
        if len(faces) and self.needs_landmarks68 and faces.landmarks68 is None:
            faces = self.landmarks([image], [faces])[0]
        if len(faces) and self.needs_embeddings and faces.embeddings is None:
            faces = replace(faces, embeddings=self.embedder([image], [faces])[0])
        return self.method(image, faces)


def _surrogate_embedder(option: object, context: MethodContext) -> Embedder:
    recognizer = None if option in (None, "dlib") else str(option)
    return build_embedder(AnonConfig(recognizer=recognizer, device=context.device,
                                     threads=context.threads))  # fmt: skip


def _embedder_id(embedder: Embedder) -> tuple[str, str]:
    return embedder.name, str(getattr(embedder, "model_path", ""))


def _first_pass_table(context: MethodContext, embedder: Embedder, limit: int):
    """The faces of the originals (``collect_faces``), computed once per evaluation for every
    surrogate row with the same embedder and donor limit, and the landmark model and embedder
    that remember them for the second pass."""
    from faceveil.anon_core.surrogate.context import collect_faces

    details_key = ("details", *_embedder_id(embedder))
    if details_key not in context.memo:
        memo = FaceMemo(keep=True)
        context.memo[details_key] = (memo.landmarks(Dlib68()), memo.embedder(embedder))
    details = context.memo[details_key]
    key = ("table", *_embedder_id(embedder), limit)
    if key not in context.memo:
        log.info("surrogate first pass over the originals with %s", embedder.name)
        context.memo[key] = collect_faces(context.originals(), context.detector, *details, limit)
    return context.memo[key], details


def _surrogate(spec: MethodSpec, context: MethodContext) -> Anonymizer:
    """The surrogate needs a first pass over the originals (donor bank, identity clusters) and a
    key; this is the one place that knows how to give it both. Options ``embedder`` ("dlib" or
    a recognition ONNX path), ``max_donor_faces`` and ``attributes`` (a labels CSV to fit
    gender and age probes on, as ``run --attributes``) are for the first pass; the rest go to
    the method (``privacy``, ``donors``, ``linkage``)."""
    try:
        from faceveil.anon_core.surrogate.build import attribute_probes, surrogate_from_table
        from faceveil.anon_core.surrogate.context import DEFAULT_MAX_DONORS
    except ImportError as exc:
        raise MethodUnavailable(f"surrogate is not importable ({exc})") from None
    options = dict(spec.options)
    embedder = _surrogate_embedder(options.pop("embedder", None), context)
    limit = options.pop("max_donor_faces", DEFAULT_MAX_DONORS)
    threshold = options.pop("threshold", None)
    labels = options.pop("attributes", None)
    probes = ()
    if labels:
        key = ("probes", str(labels), *_embedder_id(embedder))
        if key not in context.memo:
            context.memo[key] = attribute_probes(str(labels), context.detector, embedder)
        probes = context.memo[key]
    table, (landmarks, remembered) = _first_pass_table(context, embedder, int(limit))
    method, _ = surrogate_from_table(context.key, table, options, probes, threshold)
    return WithFaceDetails(method, landmarks, remembered)
