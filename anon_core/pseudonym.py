"""Identity pseudonyms: cluster faces into identities, then name each cluster by HMAC(key, cluster).

Faces are grouped across a dataset by embedding distance (average-linkage agglomerative
clustering on cosine distance, inputs sorted by id first, so the result does not depend on the
order faces were found). A cluster is named by its smallest member id, which depends only on its
content; its public pseudonym is ``HMAC-SHA256(key, cluster id)``, so one key gives one stable
name per person and two keys give unlinkable names. A face seen later is assigned to the nearest
cluster centroid within the same threshold.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16
PSEUDONYM_HEX = 16
# Same-person cosine distance between L2-normalised embeddings, per embedder name, calibrated by
# average-linkage clustering of LFW (1,110 images of 239 people). dlib's ResNet: 0.075 (Euclidean
# 0.39 on unit vectors; dlib's 0.6 is for its unnormalised output), pairwise precision 0.95 and
# recall 0.96. InsightFace recognizers: 0.6, measured with MobileFaceNet (precision 0.997,
# recall 0.97); other InsightFace models may need their own value.
SAME_PERSON = {"dlib_resnet": 0.075, "insightface": 0.6}
# Exact average linkage needs N^2 / 2 distances; above this many faces, near-duplicates are first
# merged into micro-clusters.
MAX_EXACT = 8000

_PSEUDONYM_LABEL = b"faceveil/pseudonym/v1\x00"
_CHOICE_LABEL = b"faceveil/choice/v1\x00"
_FACE_LABEL = b"faceveil/face/v1\x00"


def check_key(key: bytes) -> bytes:
    """``key`` itself if it is usable bytes; the error never shows the key."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return bytes(key)


def pseudonym(key: bytes, cluster_id: str, length: int = PSEUDONYM_HEX) -> str:
    """The public pseudonym of an identity cluster: HMAC-SHA256(key, cluster id), hex, truncated."""
    mac = hmac.new(check_key(key), _PSEUDONYM_LABEL + cluster_id.encode(), hashlib.sha256)
    return mac.hexdigest()[:length]


def face_token(key: bytes, image: np.ndarray, box: np.ndarray, length: int = PSEUDONYM_HEX) -> str:
    """A keyed name for one face of one image, tied to no identity: HMAC-SHA256(key, the image
    size, the face box in whole pixels and the original pixels inside it), hex, truncated. The
    same photo gives the same name; two photos of one person give unrelated ones."""
    h, w = image.shape[:2]
    x1, y1 = (int(np.clip(np.floor(v), 0, m)) for v, m in zip(box[:2], (w, h), strict=True))
    x2, y2 = (int(np.clip(np.ceil(v), 0, m)) for v, m in zip(box[2:4], (w, h), strict=True))
    mac = hmac.new(check_key(key), _FACE_LABEL, hashlib.sha256)
    mac.update(f"{h}x{w}:{x1},{y1},{x2},{y2}\x00".encode())
    mac.update(np.ascontiguousarray(image[y1:y2, x1:x2], np.uint8).tobytes())
    return mac.hexdigest()[:length]


def keyed_order(key: bytes, seed: str, ids: Sequence[str]) -> np.ndarray:
    """Indices of ``ids`` sorted by HMAC(key, seed, id): a deterministic, key-driven shuffle in
    which the rank of each id depends only on the key, the seed and that id."""
    base = hmac.new(check_key(key), _CHOICE_LABEL + seed.encode() + b"\x00", hashlib.sha256)
    tags = []
    for i in ids:
        mac = base.copy()
        mac.update(i.encode())
        tags.append(mac.digest())
    return np.asarray(sorted(range(len(ids)), key=tags.__getitem__), np.int64)


def unclustered_id(embedding: np.ndarray) -> str:
    """A cluster id for a face that matches no known cluster, derived from its embedding only."""
    rounded = np.round(np.asarray(embedding, np.float32), 3).astype(np.float32) + 0.0
    return "single:" + hashlib.sha256(rounded.tobytes()).hexdigest()[:32]


@dataclass(frozen=True, repr=False)
class IdentityClusters:
    """Identity clusters: stable ids, unit centroids (C x D), sizes and the distance threshold.

    ``attributes`` (C x A, optional) holds per-cluster attribute cues such as the median skin
    tone of its members. Small enough to broadcast: no member list is kept.
    """

    cluster_ids: tuple[str, ...]
    centroids: np.ndarray
    sizes: np.ndarray
    threshold: float
    attributes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.cluster_ids)

    def __repr__(self) -> str:
        return f"IdentityClusters({len(self)} clusters, threshold={self.threshold})"

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        """For each embedding (N x D), the index of the nearest centroid within the threshold,
        or -1 when none is that close."""
        emb = _unit(np.asarray(embeddings, np.float32).reshape(-1, self.centroids.shape[1]))
        if len(self) == 0 or len(emb) == 0:
            return np.full(len(emb), -1, np.int64)
        dist = 1.0 - emb @ self.centroids.T
        best = dist.argmin(axis=1)
        near = dist[np.arange(len(emb)), best] <= self.threshold
        return np.where(near, best, -1).astype(np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _average_linkage(emb: np.ndarray, threshold: float) -> np.ndarray:
    """Flat cluster labels (0-based) of average-linkage clustering cut at ``threshold``."""
    from scipy.cluster.hierarchy import fcluster, linkage

    if len(emb) == 1:
        return np.zeros(1, np.int64)
    cond = np.clip(1.0 - (emb @ emb.T).astype(np.float64), 0.0, 2.0)
    cond = cond[np.triu_indices(len(emb), 1)]
    tree = linkage(cond, method="average")
    return fcluster(tree, threshold, criterion="distance").astype(np.int64) - 1


def _micro_clusters(emb: np.ndarray, radius: float, block: int = 1024) -> np.ndarray:
    """Greedy leader clustering in input order: each face joins the first earlier leader within
    ``radius``, or leads a new micro-cluster. Returns each face's leader index."""
    leaders: list[int] = []
    owner = np.empty(len(emb), np.int64)
    for start in range(0, len(emb), block):
        chunk = emb[start : start + block]
        prior = emb[leaders] if leaders else np.zeros((0, emb.shape[1]), np.float32)
        near = (1.0 - chunk @ prior.T) <= radius if len(prior) else None
        for j in range(len(chunk)):
            hit = np.flatnonzero(near[j]) if near is not None else ()
            if len(hit):
                owner[start + j] = leaders[hit[0]]
                continue
            fresh = [i for i in leaders if i >= start]
            close = [i for i in fresh if 1.0 - float(chunk[j] @ emb[i]) <= radius]
            owner[start + j] = close[0] if close else start + j
            if not close:
                leaders.append(start + j)
    return owner


def cluster_identities(
    ids: Sequence[str],
    embeddings: np.ndarray,
    threshold: float = SAME_PERSON["dlib_resnet"],
    attributes: np.ndarray | None = None,
) -> tuple[IdentityClusters, np.ndarray]:
    """Cluster faces into identities; returns the clusters and each input's cluster index.

    ``ids`` are stable, unique face ids (for instance sample key and face number); the result
    depends on the set of (id, embedding) pairs only, not on their order. ``attributes``
    (N x A, NaN where unknown) are summarised per cluster by their median.
    """
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} ids but {len(embeddings)} embeddings")
    if not 0.0 < threshold < 2.0:
        raise ValueError(f"threshold is a cosine distance in (0, 2), got {threshold}")
    if len(set(ids)) != len(ids):
        raise ValueError("face ids must be unique")
    emb_in = np.asarray(embeddings, np.float32)
    dim = emb_in.shape[1] if emb_in.ndim == 2 else 0
    order = np.asarray(sorted(range(len(ids)), key=lambda i: ids[i]), np.int64)
    emb = _unit(emb_in[order]) if len(order) else np.zeros((0, dim), np.float32)
    labels_sorted = _labels(emb, threshold)
    labels = np.empty(len(ids), np.int64)
    labels[order] = labels_sorted
    # Name clusters by their smallest member id; index them in the order of those names.
    first: dict[int, int] = {}
    for pos, lab in enumerate(labels_sorted):
        first.setdefault(int(lab), pos)
    named = sorted(first, key=first.__getitem__)
    remap = np.empty(len(named), np.int64)
    remap[named] = np.arange(len(named))
    labels = remap[labels] if len(labels) else labels
    cluster_ids = tuple(ids[order[first[lab]]] for lab in named)
    centroids = np.zeros((len(named), dim), np.float32)
    np.add.at(centroids, labels, _unit(emb_in) if len(ids) else emb_in)
    sizes = np.bincount(labels, minlength=len(named)).astype(np.int64)
    attrs = _medians(attributes, labels, len(named)) if attributes is not None else None
    clusters = IdentityClusters(cluster_ids, _unit(centroids), sizes, float(threshold), attrs)
    log.info("clustered %d faces into %d identities", len(ids), len(clusters))
    return clusters, labels


def _labels(emb: np.ndarray, threshold: float) -> np.ndarray:
    if len(emb) <= MAX_EXACT:
        return _average_linkage(emb, threshold) if len(emb) else np.zeros(0, np.int64)
    owner = _micro_clusters(emb, threshold / 3)
    leaders, inverse = np.unique(owner, return_inverse=True)
    if len(leaders) > MAX_EXACT:
        raise ValueError(
            f"{len(emb)} faces form {len(leaders)} distinct micro-clusters, more than "
            f"{MAX_EXACT} can be clustered exactly; cluster a sample of the dataset"
        )
    sums = np.zeros((len(leaders), emb.shape[1]), np.float32)
    np.add.at(sums, inverse, emb)
    return _average_linkage(_unit(sums), threshold)[inverse]


def _medians(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    values = np.asarray(values, np.float32)
    out = np.full((n, values.shape[1]), np.nan, np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n + 1))
    for c in range(n):
        rows = values[order[bounds[c] : bounds[c + 1]]]
        rows = rows[~np.isnan(rows).any(axis=1)]
        if len(rows):
            out[c] = np.median(rows, axis=0)
    return out
