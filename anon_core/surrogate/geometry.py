"""Face geometry for surrogates: forehead-extended landmarks, fits, triangulation, warps."""

from __future__ import annotations

import functools
import importlib.util
import pickle
from pathlib import Path

import cv2
import numpy as np

JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
NOSE = np.arange(27, 36)
EYE_A = np.arange(36, 42)
EYE_B = np.arange(42, 48)
MOUTH = np.arange(48, 68)
INNER_MOUTH = np.arange(60, 68)

# Forehead points: (brow index, height above it in inter-ocular distances). Hair lines vary; the
# occlusion test keeps hair that falls inside this outline.
_FOREHEAD = ((17, 0.35), (19, 0.52), (21, 0.58), (22, 0.58), (24, 0.52), (26, 0.35))
N_POINTS = 68 + len(_FOREHEAD) + 2


def eye_frame(points68: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mid-eye point, unit 'up' vector (image y grows down) and inter-ocular distance."""
    eye_a = points68[..., EYE_A, :].mean(axis=-2)
    eye_b = points68[..., EYE_B, :].mean(axis=-2)
    axis = eye_b - eye_a
    iod = np.maximum(np.linalg.norm(axis, axis=-1), 1e-6)
    across = axis / iod[..., None]
    up = np.stack([across[..., 1], -across[..., 0]], axis=-1)
    return (eye_a + eye_b) / 2, up, iod


def disk(radius: float) -> np.ndarray:
    """An elliptic structuring element of ``radius`` pixels (at least 1)."""
    r = max(1, int(round(radius)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def feature_zones(
    shape: tuple[int, int], outline: np.ndarray, offset: np.ndarray, iod: float
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the eyes and brows, and of the lips, where dark or red pixels are expected."""
    eyes = np.zeros(shape, np.uint8)
    lips = np.zeros(shape, np.uint8)
    for part in (EYE_A, EYE_B):
        cv2.fillPoly(eyes, [np.round(outline[part] - offset).astype(np.int32)], 1)
    for brow in (np.arange(17, 22), np.arange(22, 27)):
        line = np.round(outline[brow] - offset).astype(np.int32)
        cv2.polylines(eyes, [line], False, 1, max(1, int(round(0.18 * iod))))
    cv2.fillPoly(lips, [np.round(outline[np.arange(48, 60)] - offset).astype(np.int32)], 1)
    grow = disk(0.08 * iod)
    return cv2.dilate(eyes, grow) > 0, cv2.dilate(lips, grow) > 0


def extend_landmarks(points68: np.ndarray) -> np.ndarray:
    """The 68 points plus forehead and temple points (... x N_POINTS x 2), so the outline runs
    from the hair line down to the chin."""
    pts = np.asarray(points68, np.float64)
    _, up, iod = eye_frame(pts)
    lift = up * iod[..., None]
    extra = [pts[..., i, :] + h * lift for i, h in _FOREHEAD]
    # Temples: halfway between the jaw's top ends and the outer brow ends, raised a little.
    extra.append((pts[..., 0, :] + pts[..., 17, :]) / 2 + 0.2 * lift)
    extra.append((pts[..., 16, :] + pts[..., 26, :]) / 2 + 0.2 * lift)
    return np.concatenate([pts, np.stack(extra, axis=-2)], axis=-2)


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 x 3 least-squares similarity (rotation, uniform scale, shift) taking ``src`` to ``dst``."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    var = (a**2).sum()
    if var < 1e-12:
        raise ValueError("degenerate landmarks: all points coincide")
    dot = (a * b).sum()
    cross = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum()
    c, s = dot / var, cross / var
    rot = np.array([[c, -s], [s, c]])
    return np.hstack([rot, (mu_d - rot @ mu_s)[:, None]])


def affine_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 x 3 least-squares affine transform taking ``src`` to ``dst``."""
    src = np.asarray(src, np.float64)
    design = np.hstack([src, np.ones((len(src), 1))])
    solution, *_ = np.linalg.lstsq(design, np.asarray(dst, np.float64), rcond=None)
    return solution.T


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (... x 2) moved by a 2 x 3 transform."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def triangulate(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles (M x 3 indices into ``points``) of a face shape, deterministic."""
    pts = np.asarray(points, np.float64)
    lo, hi = pts.min(axis=0) - 2, pts.max(axis=0) + 2
    subdiv = cv2.Subdiv2D((int(np.floor(lo[0])), int(np.floor(lo[1])), *map(int, np.ceil(hi - lo))))
    for x, y in pts:
        subdiv.insert((float(x), float(y)))
    out = []
    for tri in subdiv.getTriangleList().reshape(-1, 3, 2):
        dist = np.linalg.norm(pts[None, :, :] - tri[:, None, :], axis=2)
        idx = dist.argmin(axis=1)
        if dist[np.arange(3), idx].max() < 1e-3 and len(set(idx.tolist())) == 3:
            out.append(sorted(idx.tolist()))
    return np.asarray(sorted(out), np.int32)


def _triangle_maps(src_pts: np.ndarray, dst_pts: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Per triangle, the 3 x 2 matrix taking destination (x, y, 1) to source (u, v)."""
    dst = np.concatenate([dst_pts[triangles], np.ones((len(triangles), 3, 1))], axis=2)
    src = src_pts[triangles]
    det = np.linalg.det(dst)
    ok = np.abs(det) > 1e-6
    maps = np.zeros((len(triangles), 3, 2))
    maps[ok] = np.linalg.solve(dst[ok], src[ok])
    return maps, ok


def warp_triangles(
    source: np.ndarray,
    points: tuple[np.ndarray, np.ndarray],
    triangles: np.ndarray,
    box: tuple[int, int, int, int],
    interpolation: int = cv2.INTER_LINEAR,
) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-affine warp of ``source`` so its points land on others (``points``: source
    and destination points).

    Returns the warped pixels of the destination rectangle ``box`` (x1, y1, x2, y2) and a
    boolean mask of the pixels covered by a triangle; pixels outside every triangle are 0.
    """
    src_pts, dst_pts = points
    x1, y1, x2, y2 = box
    h, w = y2 - y1, x2 - x1
    local = np.asarray(dst_pts, np.float64) - (x1, y1)
    maps, ok = _triangle_maps(np.asarray(src_pts, np.float64), local, triangles)
    index = np.full((h, w), -1, np.int32)
    for t in np.flatnonzero(ok):
        poly = np.round(local[triangles[t]] * 16).astype(np.int32)
        cv2.fillConvexPoly(index, poly, int(t), lineType=cv2.LINE_8, shift=4)
        # Edges too: rounding can leave one-pixel gaps between neighbouring triangles.
        cv2.polylines(index, [poly], True, int(t), 1, cv2.LINE_8, shift=4)
    covered = index >= 0
    # Per pixel, its triangle's affine coefficients (a zero row for uncovered pixels).
    coef = np.concatenate([maps.reshape(-1, 6), np.zeros((1, 6))]).astype(np.float32)[index]
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    map_x = xs * coef[..., 0] + ys * coef[..., 2] + coef[..., 4]
    map_y = xs * coef[..., 1] + ys * coef[..., 3] + coef[..., 5]
    warped = cv2.remap(source, map_x, map_y, interpolation, borderMode=cv2.BORDER_REPLICATE)
    warped[~covered] = 0
    return warped, covered


@functools.cache
def mean_head() -> np.ndarray:
    """The 3-D mean shape of the 68 points (x right, y down, z towards the camera) that the
    ``insightface`` package ships (``insightface/data/objects/meanshape_68.pkl``); read from the
    installed package without importing it."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the surrogate needs the insightface package (its 3-D mean face shape)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "objects" / "meanshape_68.pkl"
    with open(path, "rb") as f:
        shape = np.asarray(pickle.load(f), np.float64)  # noqa: S301 (a file of an installed package)
    if shape.shape != (68, 3):
        raise RuntimeError(f"{path} is not a 68 x 3 mean shape: {shape.shape}")
    return shape


def head_projection(points68: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """The 3-D mean head (``mean_head``) posed like the face of ``points68``: a scaled
    orthographic projection (rotation, one scale, shift) fitted on the points ``fit``, returned
    for all 68 points. What is left, ``points68`` minus this, is the face's own shape and
    expression; the projection carries its head pose."""
    head = mean_head()
    src, dst = head[fit], np.asarray(points68, np.float64)[fit]
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    linear = np.linalg.lstsq(src - mu_s, dst - mu_d, rcond=None)[0].T  # 2 x 3
    u, spread, vt = np.linalg.svd(linear, full_matrices=False)
    rotation = spread.mean() * (u @ vt)  # the nearest scaled rotation (two orthogonal rows)
    return (head - mu_s) @ rotation.T + mu_d


def posed_like(donor68: np.ndarray, own68: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """``donor68`` with its head pose replaced by that of ``own68`` (both 68 x 2 in one frame):
    the own face's posed mean head plus the donor's shape and expression around its own posed
    mean head, carried over by the affine map between the two projections."""
    own_head = head_projection(own68, fit)
    donor_head = head_projection(donor68, fit)
    carry = affine_fit(donor_head, own_head)[:, :2]
    return own_head + (np.asarray(donor68, np.float64) - donor_head) @ carry.T


def blend_shape(original: np.ndarray, donors: np.ndarray, privacy: float) -> np.ndarray:
    """68 points with identity-bearing geometry moved ``privacy`` of the way to ``donors``.

    Both shapes are 68 x 2 in the same frame; ``donors`` should already be fitted to the
    original's pose. Jaw, brows and nose move point by point. Each eye and the mouth move as a
    unit (centre and width) so their opening, which is expression, stays the original's.
    """
    out = original + privacy * (donors - original)
    for part, corners in ((EYE_A, (36, 39)), (EYE_B, (42, 45)), (MOUTH, (48, 54))):
        c_o, c_d = original[part].mean(axis=0), donors[part].mean(axis=0)
        w_o = np.linalg.norm(original[corners[0]] - original[corners[1]])
        w_d = np.linalg.norm(donors[corners[0]] - donors[corners[1]])
        scale = 1.0 + privacy * (w_d / max(w_o, 1e-6) - 1.0)
        out[part] = c_o + privacy * (c_d - c_o) + (original[part] - c_o) * scale
    return out
