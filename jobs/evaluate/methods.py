"""How each evaluated method is built: the production registry, plus hooks for methods that need
context (surrogate) and the eval-only ``identity`` no-op that shows the metrics can fail."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from anon_core import methods
from anon_core.detectors import Detector
from anon_core.embeddings import DlibEmbedder, Embedder, InsightFaceEmbedder
from anon_core.faces import Faces, face_regions
from anon_core.landmarks import Dlib68, LandmarkModel
from anon_core.methods.base import Anonymizer, MethodOutput
from jobs.evaluate.config import MethodSpec

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


MethodBuilder = Callable[[MethodSpec, MethodContext], Anonymizer]
_BUILDERS: dict[str, MethodBuilder] = {}


def method_builder(name: str) -> Callable[[MethodBuilder], MethodBuilder]:
    """Register how the method ``name`` is built for evaluation (overrides the plain registry)."""

    def add(builder: MethodBuilder) -> MethodBuilder:
        _BUILDERS[name] = builder
        return builder

    return add


def build_method(spec: MethodSpec, context: MethodContext) -> Anonymizer:
    """The anonymizer for ``spec``; raises MethodUnavailable when it cannot be built here."""
    builder = _BUILDERS.get(spec.name)
    if builder is not None:
        return builder(spec, context)
    if spec.name not in methods.available():
        raise MethodUnavailable(f"no method {spec.name!r} (have {methods.available()})")
    return methods.create(spec.name, **dict(spec.options))


def eval_method_names() -> list[str]:
    """Every name ``build_method`` may accept (production registry plus eval hooks)."""
    return sorted(set(methods.available()) | set(_BUILDERS))


class IdentityMethod:
    """A no-op "anonymizer" for evaluation only: the baseline every privacy metric must flag."""

    name = "identity"
    needs_landmarks68 = False
    needs_embeddings = False

    def __call__(self, image: np.ndarray, faces: Faces) -> MethodOutput:
        regions = face_regions(faces, image.shape)
        n = len(faces)
        return MethodOutput(image.copy(), regions, (self.name,) * n, (None,) * n)


@method_builder("identity")
def _identity(spec: MethodSpec, context: MethodContext) -> Anonymizer:
    if spec.options:
        raise ValueError("the identity method takes no options")
    return IdentityMethod()


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
    if option in (None, "dlib"):
        return DlibEmbedder()
    return InsightFaceEmbedder(str(option), context.device, context.threads)


def _embedder_id(embedder: Embedder) -> tuple[str, str]:
    return embedder.name, str(getattr(embedder, "model_path", ""))


def _first_pass_table(context: MethodContext, landmarks, embedder: Embedder, limit: int):
    """The faces of the originals (``collect_faces``), computed once per evaluation for every
    surrogate row with the same embedder and donor limit."""
    from anon_core.surrogate.context import collect_faces

    key = ("table", *_embedder_id(embedder), limit)
    if key not in context.memo:
        log.info("surrogate first pass over the originals with %s", embedder.name)
        context.memo[key] = collect_faces(context.originals(), context.detector, landmarks,
                                          embedder, limit)  # fmt: skip
    return context.memo[key]


@method_builder("surrogate")
def _surrogate(spec: MethodSpec, context: MethodContext) -> Anonymizer:
    """The surrogate needs a first pass over the originals (donor bank, identity clusters) and a
    key; this is the one place that knows how to give it both. Options ``embedder`` ("dlib" or
    a recognition ONNX path), ``max_donor_faces`` and ``attributes`` (a labels CSV to fit
    gender and age probes on, as ``run --attributes``) are for the first pass; the rest go to
    the method (``privacy``, ``donors``, ``grow``)."""
    try:
        import anon_core.methods.surrogate  # noqa: F401  (registers "surrogate")
        from anon_core.surrogate.context import DEFAULT_MAX_DONORS, context_from_table
    except ImportError as exc:
        raise MethodUnavailable(f"surrogate is not importable ({exc})") from None
    if "surrogate" not in methods.available():
        raise MethodUnavailable("anon_core.methods has no 'surrogate' registered")
    options = dict(spec.options)
    embedder = _surrogate_embedder(options.pop("embedder", None), context)
    limit = options.pop("max_donor_faces", DEFAULT_MAX_DONORS)
    threshold = options.pop("threshold", None)
    labels = options.pop("attributes", None)
    probes = ()
    if labels:
        from jobs.firstpass import attribute_probes

        key = ("probes", str(labels), *_embedder_id(embedder))
        if key not in context.memo:
            context.memo[key] = attribute_probes(str(labels), context.detector, embedder)
        probes = context.memo[key]
    landmarks = Dlib68()
    table = _first_pass_table(context, landmarks, embedder, int(limit))
    surrogate_context = context_from_table(table, threshold, attributes=probes)
    method = methods.create("surrogate", key=context.key, context=surrogate_context, **options)
    return WithFaceDetails(method, landmarks, embedder)
