"""Donor bank: shape-free, lighting-flattened donor faces from a dataset sample, held in memory.

A surrogate's appearance is the average of k >= 4 donor faces of other identities and similar
attributes (k-Same-Select), never one real person's face. Donor faces are original pixels: the
bank lives in memory (and in Ray's object store), never in a file, temp file or log; its repr
shows counts only.

Attribute neighbourhood (documented choice): donors are ranked by identity-embedding distance
from the original's identity, above a floor that excludes the same and look-alike identities,
plus a skin-tone term (median Lab of cheeks and nose). Gender, age and facial hair narrow the
choice where they are known (``traits``); otherwise the embedding neighbourhood carries them.

Who is not a donor: faces too small, turned, cut off or grey (``make_donor``); faces whose
normalised look is an outlier (sunglasses, hands, heavy shadow) or whose band from the brows to
below the eyes is among the busiest. Faces found wearing glasses (a line crossing the nose
bridge that the bank's median face lacks; faint metal frames are often missed) stay in the
bank, marked, and the surrogate takes them only where too few others qualify, and then at most
one while others remain (``methods.surrogate``): an original's own glasses are kept in front
of its surrogate, so a donor's are never needed, and two wearers among the k would leave faint
frames on the mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from faceveil.anon_core.surrogate import geometry as geo
from faceveil.anon_core.surrogate import glasses
from faceveil.anon_core.surrogate.traits import N_TRAITS, padded

log = logging.getLogger(__name__)

CROP = 160  # side of a donor crop: mid-eye at (0.5, 0.38) of the side, eyes 0.25 of it apart
MIN_DONORS = 4  # k of k-Same-Select
MIN_BANK_FACES = 16
MIN_BANK_IDENTITIES = 8
MIN_DONOR_IOD = 24.0  # pixels between the eye centres of a usable donor
MAX_DONOR_YAW = 0.25
SHARPEN = 0.8  # unsharp-mask amount applied to a mean texture
# Donors are lined up with their plain mean by optical flow before they are averaged: the
# landmark warp aligns 68 points, not the brows' and lips' edges between them, whose averages
# came out doubled. A donor's pixel moves at most LINE_UP_REACH of the texture side.
LINE_UP_REACH = 0.05
LINE_UP_SMOOTH = 1.5  # Gaussian sigma (texture pixels) over each flow field: no tearing
EYE_BAND_DROP = 0.3
# A donor whose nose bridge this much of is crossed by lines the bank's median face lacks is
# taken to wear glasses, and the surrogate avoids it where enough others qualify: two wearers
# among k donors leave faint frames in the trimmed mean, and an original's own glasses are kept
# in front of the surrogate anyway. Lower than the frame search's BRIDGE, since a donor wrongly
# avoided costs little.
DONOR_BRIDGE = 0.5
MIN_CHROMA = 4.0  # skin less colourful than this (Lab a, b) is a black-and-white photo

CHEEK_A = [1, 2, 3, 4, 48, 31, 40, 41, 36]
CHEEK_B = [15, 14, 13, 12, 54, 35, 47, 46, 45]
NOSE_SKIN = [27, 31, 32, 33, 34, 35]


@dataclass(frozen=True, repr=False)
class DonorFace:
    """A dataset face kept as a donor candidate: a similarity-aligned crop (CROP x CROP RGB),
    its 68 points in crop coordinates, its unit embedding, its skin tone (Lab) and its traits
    (P(female), age, facial hair; NaN when unknown)."""

    face_id: str
    crop: np.ndarray
    points: np.ndarray
    embedding: np.ndarray
    skin: np.ndarray
    traits: np.ndarray = field(default_factory=lambda: np.full(N_TRAITS, np.nan, np.float32))

    def __repr__(self) -> str:
        return "DonorFace(<pixels hidden>)"


def yaw_proxy(points68: np.ndarray) -> float:
    """Left-right asymmetry of the nose tip between the jaw's ends: 0 frontal, near 1 profile."""
    left = np.linalg.norm(points68[30] - points68[0])
    right = np.linalg.norm(points68[30] - points68[16])
    return float(abs(left - right) / max(left + right, 1e-6))


def skin_tone(image: np.ndarray, points68: np.ndarray) -> np.ndarray:
    """Median Lab (L 0-100) of the cheeks and nose of one face; NaN when nothing is visible."""
    polys = [np.round(points68[idx]).astype(np.int32) for idx in (CHEEK_A, CHEEK_B, NOSE_SKIN)]
    allp = np.concatenate(polys)
    h, w = image.shape[:2]
    x1, y1 = np.clip(allp.min(axis=0), 0, [w, h])
    x2, y2 = np.clip(allp.max(axis=0) + 1, 0, [w, h])
    if x2 <= x1 or y2 <= y1:
        return np.full(3, np.nan, np.float32)
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    cv2.fillPoly(mask, [p - (x1, y1) for p in polys], 1)
    crop = image[y1:y2, x1:x2].astype(np.float32) / 255.0
    pixels = cv2.cvtColor(crop, cv2.COLOR_RGB2Lab)[mask > 0]
    if len(pixels) == 0:
        return np.full(3, np.nan, np.float32)
    return np.median(pixels, axis=0).astype(np.float32)


def crop_frame(points68: np.ndarray, size: int = CROP) -> np.ndarray:
    """2 x 3 similarity taking image coordinates to the donor crop frame."""
    mid, up, iod = geo.eye_frame(points68)
    scale = 0.25 * size / iod
    across = np.array([-up[1], up[0]])
    rot = scale * np.stack([across, -up])
    return np.hstack([rot, (np.array([0.5, 0.38]) * size - rot @ mid)[:, None]])


def make_donor(
    face_id: str,
    image: np.ndarray,
    points68: np.ndarray,
    embedding: np.ndarray,
    traits: np.ndarray | None = None,
) -> DonorFace | None:
    """A donor from one reliable face, or None when it is too small, turned, cut off or grey."""
    pts = np.asarray(points68, np.float64)
    _, _, iod = geo.eye_frame(pts)
    if iod < MIN_DONOR_IOD or yaw_proxy(pts) > MAX_DONOR_YAW:
        return None
    outline = geo.extend_landmarks(pts)
    h, w = image.shape[:2]
    inside = (outline[:, 0] >= 0) & (outline[:, 0] < w) & (outline[:, 1] >= 0) & (outline[:, 1] < h)
    if inside.mean() < 0.97:
        return None
    skin = skin_tone(image, pts)
    if not np.hypot(skin[1], skin[2]) >= MIN_CHROMA:  # also rejects NaN
        return None
    frame = crop_frame(pts)
    crop = cv2.warpAffine(
        image, frame, (CROP, CROP), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )
    emb = np.asarray(embedding, np.float32)
    emb = emb / max(float(np.linalg.norm(emb)), 1e-12)
    known = np.full(N_TRAITS, np.nan, np.float32) if traits is None else padded(traits)
    return DonorFace(face_id, crop, geo.apply(frame, pts).astype(np.float32), emb, skin, known)


def _procrustes_mean(shapes: np.ndarray, iterations: int = 4) -> np.ndarray:
    mean = shapes.mean(axis=0)
    for _ in range(iterations):
        aligned = np.stack([geo.apply(geo.similarity_fit(s, mean), s) for s in shapes])
        mean = aligned.mean(axis=0)
    return mean


def _fit_to_square(shape68: np.ndarray, size: int, margin: float = 3.0) -> np.ndarray:
    """``shape68`` scaled and moved so its forehead-extended outline fills a size x size square."""
    outline = geo.extend_landmarks(shape68)
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    scale = (size - 2 * margin) / float((hi - lo).max())
    centre = (lo + hi) / 2
    return (shape68 - centre) * scale + size / 2


def _smooth_in_mask(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian average of ``values`` (H x W x C) over the pixels where ``mask`` is set."""
    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    blurred = cv2.GaussianBlur(values * mask[..., None], (0, 0), sigma)
    return blurred.reshape(values.shape) / np.maximum(weight, 1e-4)[..., None]


def _flatten_lighting(texture: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Lab texture with its slow lightness changes (cast shadows, side light) removed."""
    lab = cv2.cvtColor(texture.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    slow = _smooth_in_mask(lab[..., :1], mask, 0.5 * texture.shape[0])[..., 0]
    lab[..., 0] += lab[..., 0][mask].mean() - slow
    lab[~mask] = lab[mask].mean(axis=0)
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class BankLimits:
    """The smallest usable bank (``min_faces`` donors of ``min_identities`` people) and how
    many faces of one identity it keeps at most."""

    min_faces: int = MIN_BANK_FACES
    min_identities: int = MIN_BANK_IDENTITIES
    per_identity: int = 4


@dataclass(frozen=True)
class DonorQuery:
    """What ``DonorBank.candidates`` looks for: donors near ``centroid`` (an identity's unit
    embedding) and ``skin`` (Lab), not of ``own_cluster``, at least ``floor`` away in cosine
    distance, at most ``pool`` of them, among the ``allowed`` ones (bool per donor, or None).
    ``distance_weight`` 0 ranks by skin tone alone: when gender and age are known, the nearest
    identities beyond the floor are not needed to carry them, and would only average into a
    face closer to the original's."""

    centroid: np.ndarray
    skin: np.ndarray
    own_cluster: int
    pool: int
    floor: float
    allowed: np.ndarray | None = None
    skin_weight: float = 1.0
    distance_weight: float = 1.0


@dataclass(frozen=True, repr=False)
class DonorBank:
    """Shape-free donor textures (B x S x S x 3 uint8) warped to the bank's mean shape.

    ``shape`` is the mean 68-point shape and ``outline`` its forehead-extended outline, both in
    texture pixels; ``triangles`` index the outline. Per donor: ``shapes`` (its own 68 points,
    similarity-aligned to the mean), unit ``embeddings``, ``skin`` (Lab), the index of its
    identity cluster in ``clusters``, ``traits`` (P(female), age, facial hair; NaN when
    unknown) and ``glasses`` (found wearing glasses, ``DONOR_BRIDGE``; None when not looked
    for).
    ``ids`` are face ids, used only to rank donors by key.
    """

    shape: np.ndarray
    outline: np.ndarray
    triangles: np.ndarray
    textures: np.ndarray
    shapes: np.ndarray
    embeddings: np.ndarray
    skin: np.ndarray
    clusters: np.ndarray
    ids: tuple[str, ...]
    traits: np.ndarray | None = None
    glasses: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"DonorBank({len(self)} donors of {self.identities} identities, <pixels hidden>)"

    @property
    def size(self) -> int:
        return int(self.textures.shape[1])

    @property
    def identities(self) -> int:
        return len(np.unique(self.clusters))

    @classmethod
    def from_faces(
        cls,
        donors: Sequence[DonorFace],
        clusters: np.ndarray,
        size: int = 128,
        limits: BankLimits = BankLimits(),
    ) -> DonorBank:
        """Warp donor crops to their common mean shape; ``clusters`` gives each donor's identity.

        At most ``limits.per_identity`` faces of one identity are kept (the first by face id),
        so a bank of a dataset with many photos per person still spans many people.

        Raises ValueError when fewer than ``limits.min_faces`` usable donors of
        ``limits.min_identities`` distinct identities remain: a surrogate needs several other
        people to average.
        """
        if len(donors) != len(clusters):
            raise ValueError(f"{len(donors)} donors but {len(clusters)} cluster labels")
        kept = _first_per_identity(donors, np.asarray(clusters, np.int64), limits.per_identity)
        donors = [donors[i] for i in kept]
        labels = np.asarray(clusters, np.int64)[kept]
        _check_size(len(donors), len(np.unique(labels)), limits)
        points = np.stack([d.points for d in donors]).astype(np.float64)
        shape = _fit_to_square(_procrustes_mean(points), size)
        outline = geo.extend_landmarks(shape)
        triangles = geo.triangulate(outline)
        textures, covered = _warp_all(donors, outline, triangles, size)
        keep = _typical(textures, covered) & _plain_eyes(textures, shape)
        worn = _wear_glasses(textures, covered, shape)[keep]
        textures, donors, labels = (
            textures[keep],
            [d for d, k in zip(donors, keep, strict=True) if k],
            labels[keep],
        )
        _check_size(len(donors), len(np.unique(labels)), limits)
        shapes = np.stack([geo.apply(geo.similarity_fit(p, shape), p) for p in points[keep]])
        bank = cls(
            shape=shape.astype(np.float32),
            outline=outline.astype(np.float32),
            triangles=triangles,
            textures=textures,
            shapes=shapes.astype(np.float32),
            embeddings=np.stack([d.embedding for d in donors]).astype(np.float32),
            skin=np.stack([d.skin for d in donors]).astype(np.float32),
            clusters=labels,
            ids=tuple(d.face_id for d in donors),
            traits=np.stack([padded(d.traits) for d in donors]).astype(np.float32),
            glasses=worn,
        )
        log.info(
            "donor bank: %d faces of %d identities, %d of them found wearing glasses",
            len(bank),
            bank.identities,
            int(worn.sum()),
        )
        return bank

    def candidates(self, query: DonorQuery) -> np.ndarray:
        """Up to ``query.pool`` donors of distinct identities from an identity's neighbourhood.

        The neighbourhood is a band of embedding distance: donors of the identity itself
        (``own_cluster``) and any closer than ``floor`` in cosine distance (look-alikes, unmatched
        photos of the same person) are excluded, and the nearest ``pool`` identities beyond
        the floor are kept, ranked by distance plus ``skin_weight`` times the skin-tone
        difference in units of 10 Lab (lightness at half weight). ``allowed`` (bool per donor)
        narrows the choice further (gender and age). Only the best donor of each identity is
        kept; the result is in bank order, so the choice among them is left to the key.
        """
        q = query
        dist = 1.0 - self.embeddings @ np.asarray(q.centroid, np.float32)
        ok = (self.clusters != q.own_cluster) & (dist >= q.floor)
        if q.allowed is not None:
            ok &= q.allowed
        score = q.distance_weight * dist / q.floor
        if not np.isnan(q.skin).any():
            diff = (self.skin - q.skin) * np.array([0.5, 1.0, 1.0], np.float32)
            tone = np.linalg.norm(diff, axis=1) / 10.0
            score = score + q.skin_weight * np.nan_to_num(tone, nan=10.0)
        chosen: list[int] = []
        seen: set[int] = set()
        for i in np.argsort(np.where(ok, score, np.inf), kind="stable"):
            if not ok[i] or len(chosen) == q.pool:
                break
            if int(self.clusters[i]) not in seen:
                seen.add(int(self.clusters[i]))
                chosen.append(int(i))
        return np.asarray(sorted(chosen), np.int64)

    def mean_face(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The mean texture (S x S x 3 float32) and mean shape (68 x 2) of k >= 4 donors.

        The texture is a trimmed mean: per pixel, the lowest and highest of the k values are
        dropped and the other k - 2 (at least 2 people) averaged, so what only one donor shows
        (glasses, a hand, a stray lock of hair) does not come through. Each donor is first
        lined up with the plain mean by optical flow (``line_up``), so edges the landmarks
        do not pin (brows, lip contours) are averaged in place rather than doubled.
        """
        if len(index) < MIN_DONORS:
            raise ValueError(f"a surrogate needs at least {MIN_DONORS} donors, got {len(index)}")
        stack = self.textures[index].astype(np.float32)
        stack = line_up(stack, _trimmed_mean(stack), self.inner_weight())
        texture = _trimmed_mean(stack)
        # Averaging softens edges that no single face has soft: restore some crispness.
        texture += SHARPEN * (texture - cv2.GaussianBlur(texture, (0, 0), 1.2))
        texture = np.clip(texture, 0.0, 255.0)
        return texture, self.shapes[index].astype(np.float64).mean(axis=0)

    def inner_weight(self) -> np.ndarray:
        """How far ``line_up`` may move each texture pixel, as a share of its reach (S x S
        float32): 1 well inside the bank's face outline, falling to 0 where the pixel is
        within 2 px of it (a chamfer distance, the same on any thread count), so that a moved
        pixel and the four it is interpolated from all lie inside the outline, and nothing from
        outside the face is pulled in."""
        size = self.size
        mask = np.zeros((size, size), np.uint8)
        hull = cv2.convexHull(self.outline.astype(np.float32)).astype(np.int32)
        cv2.fillConvexPoly(mask, hull, 1)
        inside = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_5)
        return np.clip((inside - 2.0) / (LINE_UP_REACH * size), 0.0, 1.0).astype(np.float32)


def _trimmed_mean(stack: np.ndarray) -> np.ndarray:
    """Per pixel, the mean of the k values without the lowest and the highest."""
    return np.sort(stack, axis=0)[1:-1].mean(axis=0)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def line_up(stack: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Each texture of ``stack`` (k x S x S x 3 float32) resampled so its edges lie on
    ``reference``'s: a dense Farneback flow from the reference to the texture, smoothed, capped
    at ``LINE_UP_REACH`` of the side and scaled by ``weight`` (S x S). OpenCV's Farneback flow
    gives the same field on any thread count (tested); like the blurs elsewhere in the renderer,
    its float arithmetic may differ in the last bits on a CPU with other vector instructions."""
    size = stack.shape[1]
    reach = LINE_UP_REACH * size
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    ref = _grey(reference)
    out = np.empty_like(stack)
    for i, texture in enumerate(stack):
        flow = cv2.calcOpticalFlowFarneback(ref, _grey(texture), None, 0.5, 3, 9, 3, 5, 1.1, 0)
        flow = cv2.GaussianBlur(flow, (0, 0), LINE_UP_SMOOTH)
        length = np.linalg.norm(flow, axis=2, keepdims=True)
        flow *= np.minimum(1.0, reach / np.maximum(length, 1e-6)) * weight[..., None]
        out[i] = cv2.remap(
            texture,
            grid_x + flow[..., 0],
            grid_y + flow[..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return out


def _first_per_identity(donors: Sequence[DonorFace], labels: np.ndarray, limit: int) -> list[int]:
    """Indices of the first ``limit`` donors (by face id) of each identity, in face-id order."""
    counts: dict[int, int] = {}
    kept = []
    for i in sorted(range(len(donors)), key=lambda i: donors[i].face_id):
        counts[int(labels[i])] = counts.get(int(labels[i]), 0) + 1
        if counts[int(labels[i])] <= limit:
            kept.append(i)
    return kept


def _check_size(faces: int, identities: int, limits: BankLimits) -> None:
    if faces < limits.min_faces or identities < limits.min_identities:
        raise ValueError(
            f"donor bank too small: {faces} usable faces of {identities} identities; need at "
            f"least {limits.min_faces} faces of {limits.min_identities} identities (frontal, "
            f"eyes >= {MIN_DONOR_IOD:.0f} px apart): sample more images for the first pass"
        )


def _warp_all(
    donors: Sequence[DonorFace], outline: np.ndarray, triangles: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    textures = np.empty((len(donors), size, size, 3), np.uint8)
    covered = None
    for i, d in enumerate(donors):
        src = geo.extend_landmarks(d.points.astype(np.float64))
        warped, mask = geo.warp_triangles(d.crop, (src, outline), triangles, (0, 0, size, size))
        covered = mask if covered is None else covered & mask
        textures[i] = _flatten_lighting(warped, mask)
    return textures, covered


def _edges(grey: np.ndarray) -> np.ndarray:
    return np.hypot(
        cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    )


def _plain_eyes(textures: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Donors whose band from the brows to below the eyes (eyes themselves left out) has few
    edges the bank's median face lacks: the most atypical EYE_BAND_DROP of the bank (glasses,
    sunglasses, caps, hair over the brows) are left out."""
    size = textures.shape[1]
    _, _, iod = geo.eye_frame(shape)
    band = np.zeros((size, size), np.uint8)
    top = int(shape[17:27, 1].min())
    bottom = int(shape[[40, 41, 46, 47], 1].max() + 0.35 * iod)
    band[max(top, 0) : bottom, int(shape[17, 0]) : int(shape[26, 0]) + 1] = 1
    for part in (geo.EYE_A, geo.EYE_B):
        cv2.fillPoly(band, [np.round(shape[part]).astype(np.int32)], 0)
    band = cv2.erode(band, np.ones((3, 3), np.uint8)) > 0
    cheeks = np.zeros((size, size), bool)
    cheeks[int(shape[30, 1]) : int(shape[33, 1]) + 1, int(shape[4, 0]) : int(shape[12, 0])] = True
    edges = np.stack(
        [_edges(cv2.cvtColor(t, cv2.COLOR_RGB2GRAY).astype(np.float32)) for t in textures]
    )
    excess = np.maximum(edges - np.median(edges, axis=0), 0.0)[:, band].mean(axis=1)
    score = excess / (edges[:, cheeks].mean(axis=1) + 5.0)
    return score <= np.quantile(score, 1.0 - EYE_BAND_DROP)


def _wear_glasses(textures: np.ndarray, covered: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Donors with glasses: lines the bank's median face lacks cross DONOR_BRIDGE of their
    nose bridge (``glasses.bridge_crossed``)."""
    size = textures.shape[1]
    lightness = np.stack(
        [cv2.cvtColor(t.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)[..., 0] for t in textures]
    )
    typical = np.median(lightness, axis=0)
    eyes, _ = geo.feature_zones((size, size), shape, np.zeros(2), geo.eye_frame(shape)[2])
    crossed = [glasses.bridge_crossed(own, typical, shape, (covered, eyes)) for own in lightness]
    return np.asarray(crossed) >= DONOR_BRIDGE


def _typical(textures: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Donors whose normalised appearance is not an outlier (sunglasses, hands, heavy shadow)."""
    small = np.stack([cv2.resize(t, (32, 32), interpolation=cv2.INTER_AREA) for t in textures])
    mask = cv2.resize(covered.astype(np.uint8), (32, 32), interpolation=cv2.INTER_NEAREST) > 0
    lum = small.astype(np.float32).mean(axis=3)[:, mask]
    lum = (lum - lum.mean(axis=1, keepdims=True)) / (lum.std(axis=1, keepdims=True) + 1e-6)
    dist = np.abs(lum - np.median(lum, axis=0)).mean(axis=1)
    med = np.median(dist)
    mad = np.median(np.abs(dist - med)) + 1e-6
    return dist <= med + 4.0 * 1.4826 * mad
