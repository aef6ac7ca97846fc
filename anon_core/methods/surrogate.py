"""The ``surrogate`` method: each face becomes a key-driven face of nobody with its pose kept.

Per face: the identity is found among the first pass's clusters (nearest centroid), named by
``HMAC(key, cluster id)``; with ``linkage="person"`` that pseudonym alone picks, by a keyed
ranking, k donors of other identities from the identity's attribute neighbourhood, so one person
gets one surrogate everywhere; with ``linkage="none"`` the face's own keyed token
(``face_token``: HMAC of its box and pixels) makes that choice, so no two photos are tied. The
donors' mean appearance is rendered on the original's pose and expression
(``anon_core.surrogate.synthesis``). Faces with unreliable landmarks, or whose surrogate cannot be
trusted (too little visible, too few donors), are masked over their box, and
``MethodOutput.methods`` says so. A face detected twice arrives once (the pipeline's
``one_per_face``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import replace

import numpy as np

from faceveil.anon_core.faces import Faces, face_regions
from faceveil.anon_core.methods.base import MethodOutput, register
from faceveil.anon_core.methods.baselines import BoxMask
from faceveil.anon_core.pseudonym import (
    check_key,
    face_token,
    keyed_order,
    pseudonym,
    unclustered_id,
)
from faceveil.anon_core.surrogate.attributes import BINARY
from faceveil.anon_core.surrogate.context import SurrogateContext
from faceveil.anon_core.surrogate.donors import MIN_DONORS, DonorQuery, skin_tone
from faceveil.anon_core.surrogate.synthesis import (
    CONTEXT,
    DEFAULT_PRIVACY,
    MAX_OCCLUDED,
    SLOW,
    Rendered,
    Synthesizer,
)
from faceveil.anon_core.surrogate.traits import TraitBands, TraitEstimator, face_traits

log = logging.getLogger(__name__)

_CACHE = 256  # identities whose mean donor face is kept ready
# Cosine distance below which no donor is taken, per embedder: the nearest other people average
# into a look-alike. dlib's ResNet: on LFW, 0.11 left surrogates re-identified 26% of the time,
# 0.15 (the 37th percentile of distances between different people) 6.5% with a gender probe.
# InsightFace: 0.95, the same percentile for MobileFaceNet on LFW. Others: twice the
# same-person threshold.
DONOR_FLOOR = {"dlib_resnet": 0.15, "insightface": 0.95}
FLOOR = 2.0
# Lower floors (as fractions of the floor) for when too few donors of the original's attributes
# are that far: rare groups in a small bank keep their attributes at some cost in privacy.
RELAXED, LAST_RESORT = 0.875, 0.75
# Grow of the whole-face region sealed for each surrogate (with every pixel its warp changed).
GROW = 0.3
# What ties the surrogates of one person together: "person" (one surrogate per identity, a
# pseudonym), or "none" (a fresh one per face).
LINKAGES = ("person", "none")


@register("surrogate")
class Surrogate:
    """Attribute-preserving surrogate faces driven by ``key`` (bytes, kept out of any repr).

    ``context`` comes from the first pass (``build_surrogate_context``); ``privacy`` in [0, 1]
    moves identity-bearing geometry toward the donors' mean shape; ``donors`` is k (>= 4), the
    number of people averaged into one surrogate; ``linkage`` ("person" or "none", see
    ``LINKAGES``) says whether the photos of one person share a surrogate and a pseudonym.
    ``surround`` is the low-pass of the head's surroundings (hairline, ears, outline) and
    ``shading`` the scale above which the original's lighting is carried over, both in
    inter-ocular distances (``Synthesizer``'s ``context`` and ``shading``); BENCHMARKS.md
    (issue 13) measures what raising them does against learning attackers.
    """

    name = "surrogate"
    needs_landmarks68 = True
    needs_embeddings = True

    def __init__(
        self,
        key: bytes,
        context: SurrogateContext,
        privacy: float = DEFAULT_PRIVACY,
        donors: int = 6,
        linkage: str = "person",
        surround: float = CONTEXT,
        shading: float = SLOW,
    ) -> None:
        self._key = check_key(key)
        if linkage not in LINKAGES:
            raise ValueError(f"linkage must be one of {LINKAGES}, got {linkage!r}")
        if not isinstance(context, SurrogateContext):
            raise TypeError("context must be a SurrogateContext from build_surrogate_context")
        if donors < MIN_DONORS:
            raise ValueError(f"donors must be at least {MIN_DONORS} (k-Same), got {donors}")
        if context.bank.identities < 2 * donors:
            raise ValueError(
                f"the donor bank holds {context.bank.identities} identities; {donors} donors "
                f"per surrogate need at least {2 * donors}"
            )
        self.context = context
        self.donors = donors
        self.pool = max(4 * donors, 16)
        self.floor = DONOR_FLOOR.get(context.embedder, FLOOR * context.clusters.threshold)
        self._donor_attributes = [p(context.bank.embeddings) for p in context.attributes]
        self.bands = TraitBands()
        self._estimator = TraitEstimator() if context.traits else None
        # With estimated gender and age, donors are ranked by skin tone only (see DonorQuery).
        self.distance_weight = 0.0 if context.traits and not context.attributes else 1.0
        self.synthesizer = Synthesizer(context.bank, privacy, context=surround, shading=shading)
        self.fallback = BoxMask()
        self.linkage = linkage
        self._faces: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"Surrogate(privacy={self.synthesizer.privacy}, donors={self.donors}, "
            f"linkage={self.linkage}, key=<hidden>, {self.context!r})"
        )

    def identify(self, embedding: np.ndarray) -> tuple[str, int]:
        """The pseudonym of the identity behind ``embedding`` and its cluster index (-1: none)."""
        cluster = int(self.context.clusters.assign(embedding[None])[0])
        cid = (
            self.context.clusters.cluster_ids[cluster]
            if cluster >= 0
            else unclustered_id(embedding)
        )
        return pseudonym(self._key, cid), cluster

    def donor_set(
        self,
        embedding: np.ndarray,
        skin: np.ndarray,
        traits: np.ndarray | None = None,
        face: str | None = None,
    ) -> tuple[str, np.ndarray]:
        """The name and the k donor indices (into the bank) for one face.

        Candidates depend on the identity (its cluster's centroid, skin tone, gender and age;
        never the person's own photos), the choice among them on the key and a name only: the
        identity's pseudonym, so every photo of one person gets the same donors, or ``face``
        (a ``face_token``, linkage "none"), so each photo gets its own. ``traits`` (P(female),
        age, facial hair) are the face's own, used when the face belongs to no cluster. Attribute
        constraints are relaxed, age first, when too few donors satisfy them; ValueError when
        too few donors qualify at all.
        """
        name, cluster = self.identify(embedding)
        clusters = self.context.clusters
        centre = clusters.centroids[cluster] if cluster >= 0 else embedding
        tone = skin
        if cluster >= 0 and clusters.attributes is not None:
            tone = clusters.attributes[cluster][:3]
            if np.isnan(tone).any():
                tone = skin
        own = self.context.cluster_traits(cluster)
        if np.isnan(own).all() and traits is not None:
            own = np.asarray(traits, np.float32)
        query = DonorQuery(centre, tone, cluster, self.pool, self.floor)
        pool = self._pool(replace(query, distance_weight=self.distance_weight), own)
        name = face or name
        order = keyed_order(self._key, name, [self.context.bank.ids[i] for i in pool])
        return name, np.sort(
            _one_wearer_at_most(pool[order], self.context.bank.glasses, self.donors)
        )

    def _pool(self, query: DonorQuery, own: np.ndarray) -> np.ndarray:
        """Candidate donors from the strictest neighbourhood (see ``_tries``) that still leaves
        the key a choice: at least k + 2 identities."""
        bank = self.context.bank
        need = self.donors + 2
        best = 0
        worn = None if bank.glasses is None else np.asarray(bank.glasses, bool)
        plain = ~worn if worn is not None and worn.any() else None
        for allowed, floor in self._tries(query.centroid, own):
            # Donors without glasses first (two wearers among the k leave faint frames on the
            # mean face), then any, before a looser neighbourhood (a wider band, a lower floor).
            masks = [allowed]
            if plain is not None:
                masks.insert(0, plain if allowed is None else allowed & plain)
            for mask in masks:
                pool = bank.candidates(replace(query, floor=floor * self.floor, allowed=mask))
                if len(pool) >= need:
                    return pool
                best = max(best, len(pool))
        raise ValueError(f"only {best} donors qualify, {need} needed")

    def _trait_tries(self, own: np.ndarray) -> list[tuple[np.ndarray | None, float]]:
        """Gender, age band and facial hair first, then the same in a wider age band, then
        gender and age band, then gender alone at lower floors, then nothing (at the floors v1
        used without probes)."""
        donors = self.context.bank.traits
        if donors is None or np.isnan(own).all():
            return [(None, 1.0), (None, RELAXED)]
        every = self.bands.compatible(own, donors)
        wider = self.bands.widened().compatible(own, donors)
        both = self.bands.compatible(own, donors, use_hair=False)
        gender = self.bands.compatible(own, donors, use_age=False, use_hair=False)
        return [
            (every, 1.0),
            (every, RELAXED),
            (wider, 1.0),
            (wider, RELAXED),
            (both, 1.0),
            (both, RELAXED),
            (gender, 1.0),
            (gender, RELAXED),
            (gender, LAST_RESORT),
            (None, 1.0),
            (None, RELAXED),
        ]

    def _tries(
        self, centre: np.ndarray, own_traits: np.ndarray
    ) -> list[tuple[np.ndarray | None, float]]:
        """(donor mask, floor factor) pairs, strictest first. With attribute probes (labels):
        every probe with its tolerance; binary probes on the original's side at lower floors;
        no probe at all. Without probes: the estimated gender and age (``_trait_tries``)."""
        probes = self.context.attributes
        if not probes:
            return self._trait_tries(own_traits)
        own = [float(p(centre[None])[0]) for p in probes]
        strict = np.logical_and.reduce(
            [
                p.compatible(o, v)
                for p, o, v in zip(probes, own, self._donor_attributes, strict=True)
            ]
        )
        sides = [
            (v >= 0.5) == (o >= 0.5)
            for p, o, v in zip(probes, own, self._donor_attributes, strict=True)
            if p.kind == BINARY
        ]
        tries = [(strict, 1.0), (strict, RELAXED)]
        if sides:
            side = np.logical_and.reduce(sides)
            tries += [(side, 1.0), (side, RELAXED), (side, LAST_RESORT)]
        return [*tries, (None, 1.0)]

    def __call__(self, image: np.ndarray, faces: Faces) -> MethodOutput:
        if len(faces) == 0:
            return MethodOutput(image.copy(), np.zeros((0, 4), np.int32), (), ())
        reliable = self._check(faces)
        plans: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}
        for i in np.flatnonzero(reliable):
            try:
                plans[int(i)] = self._plan(image, faces, int(i))
            except ValueError as exc:
                log.info("surrogate face %d falls back to mask: %s", i, exc)
        # Masks go first and surrogates render on top of them, so no surrogate's warp can move
        # a masked face's original pixels; a late failure restarts with that face masked.
        while True:
            output, failed = self._attempt(image, faces, plans)
            if not failed:
                return output
            for i in failed:
                del plans[i]

    def _attempt(
        self, image: np.ndarray, faces: Faces, plans: dict
    ) -> tuple[MethodOutput, list[int]]:
        """Render the planned faces over the masked ones (each masked over its box)."""
        regions = face_regions(faces, image.shape, GROW)
        methods = ["mask"] * len(faces)
        names: list[str | None] = [None] * len(faces)
        out = image.copy()
        masked = [i for i in range(len(faces)) if i not in plans]
        if masked:
            result = self.fallback(image, faces.select(np.asarray(masked, np.int64)))
            out = result.image
            regions[masked] = result.regions
        failed = []
        for i, (name, texture, shape) in plans.items():
            try:
                points = faces.landmarks68[i].astype(np.float64)
                face = self.synthesizer(out, points, texture, shape, int(name[:8], 16))
                if face.occluded > MAX_OCCLUDED:
                    raise ValueError(f"{face.occluded:.0%} of the face looks occluded")
            except ValueError as exc:
                log.info("surrogate face %d falls back to mask: %s", i, exc)
                failed.append(i)
                continue
            regions[i] = _paste(out, face, regions[i])
            methods[i] = self.name
            names[i] = name if self.linkage == "person" else None
        return MethodOutput(out, regions, tuple(methods), tuple(names)), failed

    def _check(self, faces: Faces) -> np.ndarray:
        if faces.landmarks68 is None or faces.embeddings is None:
            raise ValueError("surrogate needs landmarks68 and embeddings on every face")
        if "reliable" not in faces.extras:
            raise ValueError("surrogate needs extras['reliable'] from the landmark model")
        used = faces.extras.get("embedder")
        if used is not None and used != self.context.embedder:
            raise ValueError(f"embeddings from {used}, but the context was built with another")
        if faces.embeddings.shape[1] != self.context.clusters.centroids.shape[1]:
            raise ValueError("embedding size differs from the context's")
        return np.asarray(faces.extras["reliable"], bool).reshape(len(faces))

    def _plan(self, image: np.ndarray, faces: Faces, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        points = faces.landmarks68[i].astype(np.float64)
        embedding = np.asarray(faces.embeddings[i], np.float32)
        traits = None
        if self._estimator is not None and self.context.clusters.assign(embedding[None])[0] < 0:
            traits = face_traits(self._estimator, image, faces.boxes[i : i + 1], points[None])[0]
        tone = skin_tone(image, points)
        if self.linkage == "person":
            name, chosen = self.donor_set(embedding, tone, traits)
        else:
            own = face_token(self._key, image, faces.boxes[i])
            name, chosen = self.donor_set(embedding, tone, traits, face=own)
        return (name, *self._mean_face(name, chosen))

    def _mean_face(self, name: str, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = f"{name}:{chosen.tobytes().hex()}"
        if key in self._faces:
            self._faces.move_to_end(key)
            return self._faces[key]
        self._faces[key] = self.context.bank.mean_face(chosen)
        if len(self._faces) > _CACHE:
            self._faces.popitem(last=False)
        return self._faces[key]


def _paste(out: np.ndarray, face: Rendered, region: np.ndarray) -> np.ndarray:
    """Write ``face`` into ``out`` and return the union of ``region`` and the changed pixels."""
    x1, y1, x2, y2 = face.box
    before = out[y1:y2, x1:x2]
    changed = (face.pixels != before).any(axis=2)
    before[changed] = face.pixels[changed]
    if not changed.any():
        return region
    ys, xs = np.nonzero(changed)
    return np.array(
        [
            min(region[0], x1 + xs.min()),
            min(region[1], y1 + ys.min()),
            max(region[2], x1 + xs.max() + 1),
            max(region[3], y1 + ys.max() + 1),
        ],
        np.int32,
    )


def _one_wearer_at_most(ranked: np.ndarray, glasses: np.ndarray | None, k: int) -> np.ndarray:
    """The first ``k`` of ``ranked`` donors, passing over all but the first donor found wearing
    glasses while others remain: the trimmed mean drops one extreme value per pixel, so one
    wearer's frames leave little trace and two leave faint ones. Only a pool that had to take
    wearers holds any (``_pool``); passing over more of them would narrow the key's choice."""
    if glasses is None:
        return ranked[:k]
    wearer = np.asarray(glasses, bool)[ranked]
    first = wearer & (np.cumsum(wearer) == 1)
    chosen = np.concatenate([ranked[~wearer | first], ranked[wearer & ~first]])[:k]
    return ranked[np.isin(ranked, chosen)]
