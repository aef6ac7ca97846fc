"""First pass of the surrogate method: identity clusters and a donor bank from dataset samples.

Pure functions, no Ray and no disk. A job can run ``collect_faces`` per shard in parallel,
``FaceTable.merge`` the parts on the driver, and ``context_from_table`` once; or call
``build_surrogate_context`` for all three. The resulting ``SurrogateContext`` is picklable and
holds original donor pixels: keep it in memory (or the object store), never in a file or log.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.embeddings import Embedder
from faceveil.anon_core.faces import Faces, one_per_face
from faceveil.anon_core.landmarks import LandmarkModel
from faceveil.anon_core.pseudonym import SAME_PERSON, IdentityClusters, cluster_identities
from faceveil.anon_core.surrogate.attributes import LinearAttribute
from faceveil.anon_core.surrogate.donors import DonorBank, DonorFace, make_donor, skin_tone
from faceveil.anon_core.surrogate.traits import N_TRAITS, TraitEstimator, face_traits, padded

log = logging.getLogger(__name__)

DEFAULT_MAX_DONORS = 1024


def _rank(face_id: str) -> bytes:
    """Order in which donors are kept: a hash of the id, so the sample is spread evenly over the
    dataset and does not depend on the order in which shards were processed."""
    return hashlib.sha256(face_id.encode()).digest()


@dataclass(frozen=True, repr=False)
class FaceTable:
    """Every face seen in a first pass: ids, unit embeddings (N x D), skin tones (N x 3, NaN if
    unknown), plus up to ``max_donors`` donor candidates chosen by a hash of their id.
    ``traits`` (N x 3: P(female), age, facial hair; NaN if unknown) come from ``traits``;
    None when the first pass did not estimate them."""

    ids: tuple[str, ...]
    embeddings: np.ndarray
    skin: np.ndarray
    donors: tuple[DonorFace, ...]
    embedder: str
    traits: np.ndarray | None = None

    def known_traits(self) -> np.ndarray:
        """The traits, all NaN where none were estimated."""
        if self.traits is None:
            return np.full((len(self), N_TRAITS), np.nan, np.float32)
        return padded(np.asarray(self.traits, np.float32).reshape(len(self), -1))

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"FaceTable({len(self)} faces, {len(self.donors)} donor candidates)"

    @classmethod
    def merge(cls, tables: Sequence[FaceTable], max_donors: int = DEFAULT_MAX_DONORS) -> FaceTable:
        """One table from per-shard tables (same embedder), keeping the same donors as a single
        pass over all of them would."""
        names = {t.embedder for t in tables}
        if len(names) > 1:
            raise ValueError(f"tables come from different embedders: {sorted(names)}")
        if not tables:
            raise ValueError("nothing to merge")
        donors = heapq.nsmallest(
            max_donors, (d for t in tables for d in t.donors), key=lambda d: _rank(d.face_id)
        )
        return cls(
            ids=tuple(i for t in tables for i in t.ids),
            embeddings=np.concatenate([t.embeddings for t in tables]),
            skin=np.concatenate([t.skin for t in tables]),
            donors=tuple(sorted(donors, key=lambda d: d.face_id)),
            embedder=names.pop(),
            traits=None
            if all(t.traits is None for t in tables)
            else np.concatenate([t.known_traits() for t in tables]),
        )


@dataclass(frozen=True, repr=False)
class SurrogateContext:
    """What the surrogate method needs from the first pass: identity clusters (centroids and
    median skin tone per identity), the donor bank and optional attribute probes; ``embedder``
    names the embedder whose vectors the clusters hold, which the second pass must use too."""

    clusters: IdentityClusters
    bank: DonorBank
    embedder: str
    attributes: tuple[LinearAttribute, ...] = ()
    traits: bool = False

    def cluster_traits(self, cluster: int) -> np.ndarray:
        """An identity's median traits (P(female), age, facial hair); NaN when unknown."""
        extra = self.clusters.attributes
        if not self.traits or cluster < 0 or extra is None or extra.shape[1] < 5:
            return np.full(N_TRAITS, np.nan, np.float32)
        return padded(np.asarray(extra[cluster, 3:], np.float32))

    def __repr__(self) -> str:
        return f"SurrogateContext({self.clusters!r}, {self.bank!r}, embedder={self.embedder})"


def _batches(samples: Iterable[tuple[str, np.ndarray]], size: int) -> Iterator[list]:
    it = iter(samples)
    while batch := list(islice(it, size)):
        yield batch


@dataclass(frozen=True)
class CollectOptions:
    """How a first pass collects faces: up to ``max_donors`` donor candidates, images per
    ``batch``, and whether every face's gender and age are estimated (``traits``, the
    default: donors then share them without any labels)."""

    max_donors: int = DEFAULT_MAX_DONORS
    batch: int = 16
    traits: bool = True


@dataclass
class _Collected:
    ids: list[str] = field(default_factory=list)
    embs: list[np.ndarray] = field(default_factory=list)
    skins: list[np.ndarray] = field(default_factory=list)
    traits: list[np.ndarray] = field(default_factory=list)
    heap: list[tuple[bytes, int, DonorFace]] = field(default_factory=list)  # max-heap (negated)


def collect_faces(
    samples: Iterable[tuple[str, np.ndarray]],
    detector: Detector,
    landmarks: LandmarkModel,
    embedder: Embedder,
    options: CollectOptions | int = CollectOptions(),
) -> FaceTable:
    """Detect, landmark and embed every face of ``samples`` (sample id, RGB uint8), and
    estimate its gender, age and facial hair unless ``options.traits`` is off (an int is
    ``max_donors``).

    The detections of one face are merged as the second pass merges them (``one_per_face``,
    after landmarks, before embeddings), so a face detected twice is one row and at most one
    donor candidate. Faces whose landmarks are unreliable are left out (they are masked in the
    second pass). Face ids are ``"{sample id}#{face number}"``, numbered after the merge.
    """
    if isinstance(options, int):
        options = CollectOptions(max_donors=options)
    estimator = TraitEstimator() if options.traits else None
    acc = _Collected()
    for chunk in _batches(samples, options.batch):
        images = [np.ascontiguousarray(rgb) for _, rgb in chunk]
        found = [one_per_face(f) for f in landmarks(images, detector(images))]
        vectors = embedder(images, found)
        for (sid, _), image, faces, vec in zip(chunk, images, found, vectors, strict=True):
            keep = np.flatnonzero(_reliable(faces))
            traits = np.full((len(faces), N_TRAITS), np.nan, np.float32)
            if estimator is not None and len(keep):
                traits[keep] = face_traits(
                    estimator, image, faces.boxes[keep], faces.landmarks68[keep]
                )
            for i in keep:
                face_id = f"{sid}#{i}"
                acc.ids.append(face_id)
                acc.embs.append(vec[i])
                acc.skins.append(skin_tone(image, faces.landmarks68[i]))
                acc.traits.append(traits[i])
                donor = (face_id, image, faces.landmarks68[i], vec[i], traits[i])
                _offer(acc.heap, options.max_donors, donor)
    dim = getattr(embedder, "dim", 0)
    n = len(acc.ids)
    return FaceTable(
        ids=tuple(acc.ids),
        embeddings=np.asarray(acc.embs, np.float32).reshape(n, -1 if n else dim),
        skin=np.asarray(acc.skins, np.float32).reshape(n, 3),
        donors=tuple(d for _, _, d in sorted(acc.heap, key=lambda e: e[2].face_id)),
        embedder=embedder.name,
        traits=np.asarray(acc.traits, np.float32).reshape(n, N_TRAITS) if estimator else None,
    )


def _reliable(faces: Faces) -> np.ndarray:
    flags = faces.extras.get("reliable")
    if faces.landmarks68 is None or flags is None:
        raise ValueError("the landmark model did not fill landmarks68 and extras['reliable']")
    return np.asarray(flags, bool)


def _offer(heap: list, limit: int, face: tuple) -> None:
    """Keep ``face`` (face id, image, 68 points, embedding, traits) as a donor if its id ranks
    among the ``limit`` smallest hashes so far."""
    rank = _rank(face[0])
    if limit <= 0 or (len(heap) == limit and _negate(rank) < heap[0][0]):
        return
    donor = make_donor(*face)
    if donor is None:
        return
    item = (_negate(rank), len(heap), donor)
    if len(heap) < limit:
        heapq.heappush(heap, item)
    else:
        heapq.heapreplace(heap, item)


def _negate(rank: bytes) -> bytes:
    return bytes(255 - b for b in rank)


def context_from_table(
    table: FaceTable,
    threshold: float | None = None,
    texture_size: int = 128,
    attributes: Sequence[LinearAttribute] = (),
) -> SurrogateContext:
    """Cluster the table's faces into identities and build the donor bank from its donors."""
    for probe in attributes:
        if probe.embedder != table.embedder:
            raise ValueError(f"attribute {probe.name} was fitted on another embedder")
    if threshold is None:
        if table.embedder not in SAME_PERSON:
            raise ValueError(f"no calibrated threshold for embedder {table.embedder!r}; pass one")
        threshold = SAME_PERSON[table.embedder]
    # Skin tone (3) and traits (3) per face, summarised per identity by their medians.
    cues = np.hstack([table.skin.reshape(len(table), 3), table.known_traits()])
    clusters, labels = cluster_identities(table.ids, table.embeddings, threshold, cues)
    where = {face_id: n for n, face_id in enumerate(table.ids)}
    donor_labels = np.array([labels[where[d.face_id]] for d in table.donors], np.int64)
    bank = DonorBank.from_faces(table.donors, donor_labels, size=texture_size)
    traits = table.traits is not None
    return SurrogateContext(clusters, bank, table.embedder, tuple(attributes), traits)


@dataclass(frozen=True)
class ContextOptions:
    """``build_surrogate_context``'s settings: the first pass's ``collect`` options, the
    clustering ``threshold`` (None: the embedder's calibrated one), the donor textures' side
    and optional attribute probes."""

    collect: CollectOptions = CollectOptions()
    threshold: float | None = None
    texture_size: int = 128
    attributes: tuple[LinearAttribute, ...] = ()


def build_surrogate_context(
    samples: Iterable[tuple[str, np.ndarray]],
    detector: Detector,
    landmarks: LandmarkModel,
    embedder: Embedder,
    options: ContextOptions = ContextOptions(),
) -> SurrogateContext:
    """The whole first pass over ``samples`` (sample id, RGB uint8) in one process."""
    table = collect_faces(samples, detector, landmarks, embedder, options.collect)
    return context_from_table(table, options.threshold, options.texture_size, options.attributes)
