"""Eyeglass frames on the original face, kept in front of the surrogate like other occluders.

Frames are thin lines (dark plastic, light metal) around both eyes that the donors' mean face
lacks. Colour-based occluder tests miss them (a line a few pixels wide is removed by any
clean-up of speckle), so they are found by shape:

1. line response: the morphological black-hat (dark lines) and top-hat (light lines) of the
   lightness, at a width of about 0.07 inter-ocular distances, on the original and on the
   expected look (the mean texture on the original's geometry);
2. excess: where the original's response exceeds the expected's (spread a little, so brows and
   eyelids a few pixels apart do not count), outside the eyes and brows themselves, except
   for lines running across between the brows' inner ends, where a frame's bridge often sits;
3. a bridge and two rings: a face wears glasses when an excess line crosses most of the nose
   bridge (between the inner eye corners, from the brows' inner ends down to the nose's top),
   and, for both eyes, some of the rays from the eye's centre, sideways and downwards, cross
   an excess line between 0.15 and 0.7 inter-ocular distances out. The line pixels those rays
   cross, and what connects to them near the eyes (across gaps of up to 0.08 inter-ocular
   distances, where a faint stretch cut a rim in two), are the frames.

The eyes inside the lenses stay the surrogate's. Wrinkles, bags and shadows seldom both cross
the nose bridge and ring the eyes; where deep lines under older eyes do, parts of them are kept
(3 of 125 faces without glasses in ``bench/bench_occluders.py``).
"""

from __future__ import annotations

import cv2
import numpy as np

from faceveil.anon_core.surrogate import geometry as geo

LINE_WIDTH = 0.07  # frames thinner than this (inter-ocular distances) count as lines
EXCESS = 7.0  # Lab lightness by which the original's line response must exceed the expected's
RING_HIT = 0.28  # share of rays per eye that must cross a frame
LINK = 0.04  # pieces of a line this close (inter-ocular distances, either side) are one frame
BRIDGE = 0.6  # share of the nose bridge's width that a line must cross
_REACH = (0.15, 0.7)  # where along a ray a frame may lie, in inter-ocular distances
# Ray directions (degrees, 0 = away from the nose, 90 = down); the upper rim hides in the brows.
_ANGLES = np.deg2rad(np.arange(-30.0, 211.0, 15.0))


def line_strength(lightness: np.ndarray, radius: float) -> np.ndarray:
    """Strength of thin dark or light lines in a lightness image."""
    return _hats(lightness, geo.disk(radius))


def _hats(lightness: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The larger of the black-hat (dark lines) and top-hat (light lines) with ``kernel``."""
    dark = cv2.morphologyEx(lightness, cv2.MORPH_BLACKHAT, kernel)
    light = cv2.morphologyEx(lightness, cv2.MORPH_TOPHAT, kernel)
    return np.maximum(dark, light)


def frames(
    original_l: np.ndarray,
    expected_l: np.ndarray,
    points: np.ndarray,
    zones: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Mask of eyeglass frames (bool, shape of ``original_l``), empty when none are worn.

    ``original_l`` and ``expected_l`` are Lab lightness (0-100) of the original and of its
    expected look; ``points`` the original's 68 landmarks in the same coordinates;
    ``zones`` the face (where the expected look is defined) and its eyes and brows (where no
    frame pixel is taken, except a line running across between the brows' inner ends).
    """
    excess = _excess(original_l, expected_l, points, zones)
    if not excess.any() or _bridge(excess, points) < BRIDGE:
        return np.zeros_like(excess)
    _, up, iod = geo.eye_frame(points)
    iod = float(iod)
    _, labels = cv2.connectedComponents(excess.astype(np.uint8), connectivity=8)
    # Rays look one pixel either side, so a gap in a thin line does not hide it.
    reach = cv2.dilate(labels.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
    across = np.array([-up[1], up[0]])
    hit: set[int] = set()
    near = np.zeros(excess.shape, np.uint8)
    for part, outward in ((geo.EYE_A, -1.0), (geo.EYE_B, 1.0)):
        centre = points[part].mean(axis=0)
        found = _ray_hits(reach, centre, (outward * across, -up), iod)
        if len(found) < RING_HIT * len(_ANGLES):
            return np.zeros_like(excess)
        hit.update(found.values())
        cv2.circle(near, tuple(int(round(c)) for c in centre), int(round(_REACH[1] * iod)), 1, -1)
    kept = np.isin(labels, sorted(hit)) & (near > 0)
    # Pieces of a frame that a faint stretch cut off (no ray met them first) join it when
    # they lie within a small gap of it; small gaps in a kept frame are then closed.
    _, joined = cv2.connectedComponents(cv2.dilate(excess.astype(np.uint8), geo.disk(LINK * iod)))
    kept = (np.isin(joined, np.unique(joined[kept])) & excess & (near > 0)).astype(np.uint8)
    return cv2.morphologyEx(kept, cv2.MORPH_CLOSE, geo.disk(0.03 * iod)) > 0


def bridge_crossed(
    original_l: np.ndarray,
    expected_l: np.ndarray,
    points: np.ndarray,
    zones: tuple[np.ndarray, np.ndarray],
) -> float:
    """Share of the nose bridge's width that a line the expected look lacks crosses (0 to 1),
    the first of ``frames``'s two tests; arguments as for ``frames``."""
    excess = _excess(original_l, expected_l, points, zones)
    return _bridge(excess, points) if excess.any() else 0.0


def _excess(
    original_l: np.ndarray,
    expected_l: np.ndarray,
    points: np.ndarray,
    zones: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Where the original's line strength exceeds the expected look's (spread a little) by
    more than EXCESS, inside the face and outside its eyes and brows. Where the brows' zone
    reaches into the band the bridge test scans, a line that runs across there (a frame's
    bridge, often as high as the brows' inner ends) counts too; a frown line there, which runs
    up and down, does not."""
    face, features = zones
    iod = float(geo.eye_frame(points)[2])
    radius = max(1.0, LINE_WIDTH * iod)
    grow = geo.disk(0.04 * iod)
    spread = cv2.dilate(line_strength(expected_l, radius), grow)
    inside = cv2.erode(face.astype(np.uint8), geo.disk(radius + 1)) > 0
    excess = (line_strength(original_l, radius) - spread > EXCESS) & inside
    strip = _bridge_strip(excess.shape, points) & features
    if strip.any():
        across = _across_strength(original_l, radius)
        spread = cv2.dilate(_across_strength(expected_l, radius), grow)
        return excess & (~features | (strip & (across - spread > EXCESS)))
    return excess & ~features


def _across_strength(lightness: np.ndarray, radius: float) -> np.ndarray:
    """Strength of thin dark or light lines that run across the image (an upright kernel)."""
    return _hats(lightness, np.ones((2 * max(1, int(round(radius))) + 1, 1), np.uint8))


def _bridge_strip(shape: tuple[int, ...], points: np.ndarray) -> np.ndarray:
    """The band ``_bridge`` scans: from the middle 60 % between the brows' inner ends down to
    the same width about the nose's top."""
    a, b = points[21], points[22]
    half = 0.3 * (points[42] - points[39])
    corners = np.array([a + 0.2 * (b - a), a + 0.8 * (b - a), points[28] + half, points[28] - half])
    strip = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(strip, np.round(corners).astype(np.int32), 1)
    return strip > 0


def _bridge(excess: np.ndarray, points: np.ndarray, columns: int = 12) -> float:
    """Share of the nose bridge's width (between the inner eye corners, 20 % to 80 %) where
    a line runs somewhere from the brows' inner ends down to the top of the nose."""
    h, w = excess.shape
    crossed = []
    for u in np.linspace(0.2, 0.8, columns):
        top = points[21] + u * (points[22] - points[21])
        bottom = points[28] + (u - 0.5) * (points[42] - points[39])
        steps = max(2, int(np.linalg.norm(bottom - top)) + 1)
        path = np.round(top + np.linspace(0.0, 1.0, steps)[:, None] * (bottom - top)).astype(int)
        inside = (path[:, 0] >= 0) & (path[:, 0] < w) & (path[:, 1] >= 0) & (path[:, 1] < h)
        crossed.append(bool(excess[path[inside, 1], path[inside, 0]].any()))
    return float(np.mean(crossed))


def _ray_hits(
    labels: np.ndarray, centre: np.ndarray, axes: tuple[np.ndarray, np.ndarray], iod: float
) -> dict[int, int]:
    """For each ray direction that crosses a labelled line, the label it meets first."""
    h, w = labels.shape
    side, up = axes
    steps = np.linspace(_REACH[0], _REACH[1], max(8, int(iod * (_REACH[1] - _REACH[0]))))
    found: dict[int, int] = {}
    for k, angle in enumerate(_ANGLES):
        direction = np.cos(angle) * side - np.sin(angle) * up
        path = centre + steps[:, None] * iod * direction
        xs = np.round(path[:, 0]).astype(int)
        ys = np.round(path[:, 1]).astype(int)
        inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        met = labels[ys[inside], xs[inside]]
        met = met[met > 0]
        if len(met):
            found[k] = int(met[0])
    return found
