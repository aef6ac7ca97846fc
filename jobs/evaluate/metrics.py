"""The figures of the report as plain numpy functions: identification, verification, landmark
error (``anon_core.landmarks``), SSIM outside the face regions."""

from __future__ import annotations

import cv2
import numpy as np

from faceveil.anon_core.faces import Faces


def rank1(
    gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray, probe_ids: np.ndarray
) -> tuple[int, int]:
    """(correct, total): probes whose most similar gallery embedding (cosine; the first on a
    tie) belongs to their own identity."""
    if len(probes) == 0 or len(gallery) == 0:
        return 0, len(probes)
    best = np.argmax(probes @ gallery.T, axis=1)
    return int(np.sum(gallery_ids[best] == probe_ids)), len(probes)


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The score t with at most ``floor(far * n)`` impostor scores above it; accept if s > t."""
    if len(impostor) == 0:
        return float("inf")
    ordered = np.sort(impostor)[::-1]
    k = int(np.floor(far * len(ordered)))
    return float(ordered[k]) if k < len(ordered) else float("-inf")


def verification_scores(
    originals: np.ndarray,
    anonymized: np.ndarray,
    ids: np.ndarray,
    columns: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine scores of original i against anonymized j.

    Genuine: same identity, different image (i != j); impostor: different identities. Row k of
    ``anonymized`` is image ``columns[k]`` (an index into ``originals`` and ``ids``), or image k
    when ``columns`` is None (every image anonymized).
    """
    columns = np.arange(len(ids)) if columns is None else np.asarray(columns, np.int64)
    scores = originals @ anonymized.T
    same = ids[:, None] == ids[columns][None, :]
    other_image = np.arange(len(ids))[:, None] != columns[None, :]
    return scores[same & other_image], scores[~same]


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(true accept rate, threshold) at the given false accept rate."""
    threshold = threshold_at_far(impostor, far)
    tar = float(np.mean(genuine > threshold)) if len(genuine) else float("nan")
    return tar, threshold


def central_face(faces: Faces, shape: tuple[int, ...]) -> int | None:
    """Index of the highest-scoring detection whose box contains the image centre, or None."""
    if len(faces) == 0:
        return None
    cy, cx = shape[0] / 2, shape[1] / 2
    b = faces.boxes
    inside = (b[:, 0] <= cx) & (cx <= b[:, 2]) & (b[:, 1] <= cy) & (cy <= b[:, 3])
    if not inside.any():
        return None
    return int(np.argmax(np.where(inside, b[:, 4], -np.inf)))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def ssim_map(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004, Gaussian window) of the luma of two RGB uint8 images."""
    x, y = _luma(a), _luma(b)
    size = (2 * radius + 1, 2 * radius + 1)

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, size, sigma, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy = blur(x * x) - mx * mx, blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def outside_mask(shape: tuple[int, ...], regions: np.ndarray, margin: int = 5) -> np.ndarray:
    """True where a pixel is at least ``margin`` away from every region and the image border,
    so no SSIM window there reaches into a changed region."""
    h, w = shape[:2]
    mask = np.zeros((h, w), bool)
    mask[margin : h - margin, margin : w - margin] = True
    for x1, y1, x2, y2 in np.asarray(regions, np.int64).reshape(-1, 4):
        mask[max(0, y1 - margin) : y2 + margin, max(0, x1 - margin) : x2 + margin] = False
    return mask


def ssim_outside(original: np.ndarray, other: np.ndarray, regions: np.ndarray) -> float:
    """Mean SSIM over the pixels outside every face region (NaN when nothing is outside)."""
    mask = outside_mask(original.shape, regions)
    if not mask.any():
        return float("nan")
    return float(ssim_map(original, other)[mask].mean())
