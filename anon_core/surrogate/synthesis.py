"""Render a surrogate face: donors' mean appearance on the original's pose and expression.

For one face, with the original's 68 points and a donor set's mean texture and mean shape:

1. target geometry: the original's points with identity-bearing geometry (jaw, brows, nose, eye
   and mouth placement and width) moved ``privacy`` of the way to the donors' mean shape, which
   is first posed like the original in 3-D (``geometry.posed_like``: a mean 3-D head fitted to
   both, so only shape moves, not head pose); eye and mouth opening (expression) stay the
   original's;
2. the surroundings follow: the original is warped (piecewise affine) from its outline to the
   target outline, inside a fixed ring around the face, so no part of the old jaw shows;
3. the mean texture is warped onto the target outline (forehead to chin);
4. colour and lighting are matched on the target geometry, over skin only (eyes, brows and lips
   left out): Lab mean and spread, then the slow (low-frequency) Lab difference between the
   warped original and the rendered texture, so shading follows the original's light;
5. occluders are kept: pixels that look neither like the face's skin nor like the expected
   appearance (hands, hair, a mask, a patch), and eyeglass frames found by their shape
   (``glasses``), keep their original values exactly, as does
   the inside of an open mouth (taken from the warped original);
6. the photo's level of fine detail, measured on its skin octave by octave, is given back as
   seeded noise in the octaves finer than one texture pixel as drawn, and in the two finest
   (sensor noise, JPEG) at any size (``grain``: a mean of k donors is smoother than any
   photo); a feathered mask blends the face in;
7. the head's surroundings that a recognizer's aligned crop holds (hair line, forehead edge,
   ears, head outline: what re-identified people once the inner face was replaced) are
   low-passed: a Gaussian of ``context`` inter-ocular distances over an ellipse about
   1.8 x 1.9 inter-ocular distances around the eyes, feathered out, the face itself untouched,
   and the photo's pixel-level grain is given back there;
8. a grey photo gets a grey face.

Every changed pixel lies inside the ring, or inside that context ellipse when ``context`` > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from faceveil.anon_core.surrogate import geometry as geo
from faceveil.anon_core.surrogate import glasses, grain
from faceveil.anon_core.surrogate.donors import DonorBank

# The renderer's revision, recorded in a surrogate job's config: raised whenever the same inputs,
# key and options give other pixels, so that a --resume never mixes two renderings in one
# dataset (one person would get two surrogates). 2: donors' shape posed in 3-D (jobs written
# before it carry no revision). 3: turned faces refitted from the detector's five points
# (``landmarks.Dlib68``) get a surrogate, not a mask, and join the first pass's faces. 4: donors
# lined up by optical flow before they are averaged (``donors.line_up``). 5: pieces of a glasses
# frame a small gap apart are kept as one frame (``glasses.LINK``). 6: dlib's recognizer runs in
# onnxruntime (``anon_core.dlibnet``); its descriptors, which pick donors and link a person's
# faces, differ from dlib's own by up to 1e-6. 7: the photo's level of fine detail, octave by
# octave, is given back to the face and its surroundings as seeded noise (``grain``). 8: donors
# found wearing glasses are avoided where enough others qualify (``donors.DONOR_BRIDGE``): two
# wearers among the k left faint frames on the mean face. The frame search counts a bridge as
# high as the brows.
RENDERER = 8
# ``--privacy`` by default: of 0.5, 0.55 and 0.6 on the full lfw_dev at renderer 8 (BENCHMARKS.md,
# issue 12), the highest whose head-pose change was within 2.5 degrees (2.39; 0.6 gave 2.52);
# its worst rank-1 was 1.8%, within 3%. Redrawn with path-free sample ids: 2.46 and 1.6%.
# Renderer 7 had 0.6 (0.5 was over 3% at renderer 2).
DEFAULT_PRIVACY = 0.55
RING_SCALE = 1.3
# Pose-stable points used to fit the donors' mean shape to the original's pose.
_POSE_POINTS = np.array([27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45, 48, 54])
_SCALE_FLOOR = np.array([5.0, 2.5, 2.5], np.float32)  # Lab spread floor for occlusion scores
MAX_OCCLUDED = 0.4  # above this fraction of the face, a surrogate is not trusted
SLOW = 0.6  # lighting is carried over at scales above this many inter-ocular distances
CONTEXT = 0.25  # low-pass of the head's surroundings, in inter-ocular distances (0: kept)
# The context ellipse, in inter-ocular distances from the mid-eye point (down positive): it
# covers the 112 x 112 aligned crop of ArcFace-style recognizers (about 1.6 either side of the
# eyes' midpoint, 1.5 above and 1.7 below the eye line) with some margin.
_CONTEXT_AXES = (1.9, 2.0)
_CONTEXT_DROP = 0.2
GREY_SPREAD = 3.0  # largest typical channel difference (0-255) of a black-and-white photo


@dataclass(frozen=True)
class Rendered:
    """One face's result: a box (x1, y1, x2, y2) of the image, its new pixels (uint8) and
    the fraction of the face kept as occluder."""

    box: tuple[int, int, int, int]
    pixels: np.ndarray
    occluded: float


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _rgb(lab: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB) * 255.0


def _smooth(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian average of ``values`` (H x W x C) over the pixels where ``mask`` is set.

    Wide blurs run on a reduced copy (a Gaussian of sigma s keeps nothing finer than s / 4).
    """
    h, w = mask.shape
    factor = max(1.0, sigma / 3.0)
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    weight = mask.astype(np.float32)
    stacked = np.concatenate([values * weight[..., None], weight[..., None]], axis=2)
    small = cv2.resize(stacked, size, interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma * size[0] / w)
    full = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
    return full[..., :-1] / np.maximum(full[..., -1:], 1e-3)


def _polygon_mask(shape: tuple[int, int], points: np.ndarray, offset: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round((points - offset) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return mask > 0


class Synthesizer:
    """Renders surrogate faces from a donor bank's textures; ``privacy`` in [0, 1]."""

    def __init__(
        self,
        bank: DonorBank,
        privacy: float = DEFAULT_PRIVACY,
        keep_occluders: bool = True,
        context: float = CONTEXT,
        shading: float = SLOW,
    ) -> None:
        if not 0.0 <= privacy <= 1.0:
            raise ValueError(f"privacy must be in [0, 1], got {privacy}")
        if context < 0 or shading <= 0:
            raise ValueError("context must be >= 0 and shading > 0 (inter-ocular distances)")
        self.bank = bank
        self.privacy = float(privacy)
        self.keep_occluders = keep_occluders
        self.context = float(context)
        self.shading = float(shading)
        outline = bank.outline.astype(np.float64)
        self.hull = cv2.convexHull(outline.astype(np.float32), returnPoints=False)[:, 0]
        self.hull = np.sort(self.hull)
        self.texture_iod = float(geo.eye_frame(bank.shape.astype(np.float64))[2])
        self.ring_triangles = geo.triangulate(np.concatenate([outline, self._ring(outline)]))

    def _ring(self, outline: np.ndarray) -> np.ndarray:
        hull = outline[self.hull]
        centre = hull.mean(axis=0)
        return centre + RING_SCALE * (hull - centre)

    def target_shape(self, points68: np.ndarray, donor_shape: np.ndarray) -> np.ndarray:
        """The surrogate's 68 points in image coordinates (see the module docstring, step 1)."""
        pts = np.asarray(points68, np.float64)
        to_bank = geo.similarity_fit(pts, self.bank.shape)
        own = geo.apply(to_bank, pts)
        # The donors' shape is posed in 3-D like the original (a 2-D fit would pull a turned
        # face's nose and eyes towards the donors' mostly frontal mean, which reads as a turn).
        donors = geo.posed_like(np.asarray(donor_shape, np.float64), own, _POSE_POINTS)
        blended = geo.blend_shape(own, donors, self.privacy)
        # What of the blend still reads as a turn of the mean head is taken out again.
        own_head = geo.head_projection(own, _POSE_POINTS)
        blended -= geo.head_projection(blended, _POSE_POINTS) - own_head
        return geo.apply(geo.invert(to_bank), blended)

    def __call__(
        self,
        image: np.ndarray,
        points68: np.ndarray,
        texture: np.ndarray,
        donor_shape: np.ndarray,
        seed: int = 0,
    ) -> Rendered:
        """Render one surrogate face over ``image`` (RGB uint8, not modified); ``seed`` fixes
        the noise that gives back the photo's level of fine detail (``grain``)."""
        src = geo.extend_landmarks(np.asarray(points68, np.float64))
        tgt = geo.extend_landmarks(self.target_shape(points68, donor_shape))
        ring = self._ring(src)
        reach = [ring, tgt]
        if self.context > 0:
            reach.append(_context_outline(np.asarray(points68, np.float64)))
        box = _box(np.concatenate(reach), image.shape)
        x1, y1, x2, y2 = box
        original = image[y1:y2, x1:x2]
        base = self._follow(image, src, tgt, ring, box)
        synth, face = geo.warp_triangles(
            texture, (self.bank.outline, tgt), self.bank.triangles, box, cv2.INTER_CUBIC
        )
        expected, src_face = geo.warp_triangles(
            texture, (self.bank.outline, src), self.bank.triangles, box
        )
        iod = float(geo.eye_frame(np.asarray(points68, np.float64))[2])
        offset = np.array([x1, y1], np.float64)
        shape = original.shape[:2]
        occ = np.zeros(shape, bool)
        if self.keep_occluders:
            occ = _occlusion(original, (expected, src_face), src, offset, iod)
        # Colours are matched on the target geometry: the original warped there (``base``)
        # against the rendered texture, so nothing of the original's features moves along.
        occ_t = self._follow_mask(occ, src, tgt, ring, box) if occ.any() else occ
        mouth = _open_mouth(shape, tgt, offset, iod)
        if mouth.any() and occ_t[mouth].mean() > 0.3:
            mouth[:] = False  # an occluded mouth: its inside is not shown
        eyes_t, lips_t = geo.feature_zones(shape, tgt, offset, iod)
        skin = face & ~occ_t & ~eyes_t & ~lips_t
        skin = skin if skin.sum() >= 64 else face & ~occ_t
        matched = _ColourMatch(base, synth, skin, self.shading * iod)
        rendered = matched(synth)
        # The photo's own level of fine detail, octave by octave, measured on its skin (the
        # original's geometry) and added as seeded noise (``grain``).
        eyes_s, lips_s = geo.feature_zones(shape, src, offset, iod)
        own_skin = (original, src_face & ~occ & ~eyes_s & ~lips_s)
        enlarged = iod / self.texture_iod  # image pixels per texture pixel
        detail = grain.missing_detail(own_skin, (rendered, skin), iod, seed, enlarged)
        rendered += detail[..., None]
        alpha = _alpha(face, mouth, iod)
        pixels = base + alpha[..., None] * (rendered - base)
        if self.context > 0:
            # The face (open mouth included) is left alone; only what lies around it is changed.
            inside = _alpha(face | mouth, np.zeros_like(mouth), iod)
            own = np.asarray(points68, np.float64) - offset
            masks = (own_skin[1], ~src_face & ~occ)
            pixels = self._low_pass(pixels, inside, own, (original, masks), seed)
        if occ.any():
            # Occluders stay where they are, blended out into the surrogate around them.
            keep = _soften(occ, 0.06 * iod)[..., None]
            pixels = pixels + keep * (original.astype(np.float32) - pixels)
        if _is_grey(original):
            pixels = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2)
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        pixels[occ] = original[occ]
        occluded = float(occ[src_face].mean()) if src_face.any() else 0.0
        return Rendered(box, pixels, occluded)

    def _low_pass(
        self,
        pixels: np.ndarray,
        alpha: np.ndarray,
        points68: np.ndarray,
        photo: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]],
        seed: int,
    ) -> np.ndarray:
        """``pixels`` with the head's surroundings (the context ellipse, outside the rendered
        face) replaced by their Gaussian low-pass, with the photo's pixel-level grain given
        back by seeded noise; ``points68`` in box coordinates. The grain's level is the lower
        of the original's skin and of its surroundings (``photo``: the original, and masks of
        its skin and of what lies outside its face): the skin's where the surroundings are
        hair and edges (small faces), the surroundings' where they are smoother than skin (a
        blurred background)."""
        _, _, iod = geo.eye_frame(points68)
        zone = np.zeros(alpha.shape, np.uint8)
        outline = np.round(_context_outline(points68) * 16).astype(np.int32)
        cv2.fillPoly(zone, [outline], 1, cv2.LINE_8, 4)
        weight = cv2.GaussianBlur(zone.astype(np.float32), (0, 0), max(1.0, _CONTEXT_DROP * iod))
        weight *= 1.0 - alpha
        soft = cv2.GaussianBlur(pixels, (0, 0), max(0.5, self.context * float(iod)))
        ring = zone > 0
        original, (skin, outside) = photo
        current = (soft, ring & (weight > 0.5))
        detail = grain.missing_detail(
            (original, [skin, ring & outside]), current, iod, (seed, 1), 0.0
        )
        return pixels + weight[..., None] * (soft + detail[..., None] - pixels)

    def _follow_mask(
        self, mask: np.ndarray, src: np.ndarray, tgt: np.ndarray, ring: np.ndarray, box: tuple
    ) -> np.ndarray:
        """A mask of the box, moved like the original by ``_follow``."""
        if self.privacy == 0.0:
            return mask
        x1, y1 = box[:2]
        full = np.zeros((box[3], box[2]), np.uint8)
        full[y1:, x1:] = mask
        moved, covered = geo.warp_triangles(
            full,
            (np.concatenate([src, ring]), np.concatenate([tgt, ring])),
            self.ring_triangles,
            box,
        )
        return np.where(covered, moved > 0, mask)

    def _follow(
        self, image: np.ndarray, src: np.ndarray, tgt: np.ndarray, ring: np.ndarray, box: tuple
    ) -> np.ndarray:
        """The original inside ``box``, warped so its face outline moves onto the target's."""
        x1, y1, x2, y2 = box
        base = image[y1:y2, x1:x2].astype(np.float32)
        if self.privacy == 0.0:
            return base
        warped, covered = geo.warp_triangles(
            image,
            (np.concatenate([src, ring]), np.concatenate([tgt, ring])),
            self.ring_triangles,
            box,
        )
        base[covered] = warped[covered]
        return base


def _context_outline(points68: np.ndarray, count: int = 48) -> np.ndarray:
    """The context ellipse (``count`` points) of a face, in the coordinates of its points."""
    mid, up, iod = geo.eye_frame(points68)
    across = np.array([-up[1], up[0]])
    t = np.linspace(0.0, 2 * np.pi, count, endpoint=False)
    a, b = _CONTEXT_AXES
    centre = mid - 0.15 * iod * up
    return centre + np.cos(t)[:, None] * (a * iod * across) + np.sin(t)[:, None] * (b * iod * up)


def _is_grey(rgb: np.ndarray) -> bool:
    """A black-and-white photo: its channels nearly equal almost everywhere."""
    pixels = rgb.reshape(-1, 3).astype(np.int16)
    spread = pixels.max(axis=1) - pixels.min(axis=1)
    return bool(np.quantile(spread, 0.95) <= GREY_SPREAD)


def _box(points: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    lo = np.floor(points.min(axis=0)) - 1
    hi = np.ceil(points.max(axis=0)) + 2
    x1, y1 = int(np.clip(lo[0], 0, w)), int(np.clip(lo[1], 0, h))
    x2, y2 = int(np.clip(hi[0], 0, w)), int(np.clip(hi[1], 0, h))
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise ValueError("face lies outside the image")
    return x1, y1, x2, y2


class _ColourMatch:
    """Maps a rendered texture's colours onto the original's: Lab mean and spread over
    ``mask``, then the slow Lab difference between the original and the expected appearance."""

    def __init__(
        self, original: np.ndarray, expected: np.ndarray, mask: np.ndarray, scale: float
    ) -> None:
        if mask.sum() < 16:
            raise ValueError("too little of the face is visible to match its colours")
        orig = _lab(original)
        exp = _lab(expected)
        self.mu_o, self.mu_e = orig[mask].mean(axis=0), exp[mask].mean(axis=0)
        sd_o, sd_e = orig[mask].std(axis=0), exp[mask].std(axis=0)
        self.gain = np.clip(sd_o / np.maximum(sd_e, 1e-3), 0.8, 1.25)
        shifted = (exp - self.mu_e) * self.gain + self.mu_o
        self.slow = _smooth(orig - shifted, mask, max(1.0, scale))

    def __call__(self, rendered: np.ndarray) -> np.ndarray:
        lab = (_lab(rendered) - self.mu_e) * self.gain + self.mu_o + self.slow
        lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
        return _rgb(lab)


def _open_mouth(shape: tuple[int, int], outline: np.ndarray, offset: np.ndarray, iod: float):
    """The inside of the lips when the mouth is open (teeth, tongue), else nothing; a little
    wider than the inner-lip points, which tend to fall short of wide smiles."""
    inner = outline[geo.INNER_MOUTH]
    if cv2.contourArea(inner.astype(np.float32)) < 0.02 * iod * iod:
        return np.zeros(shape, bool)
    mask = _polygon_mask(shape, inner, offset).astype(np.uint8)
    return cv2.dilate(mask, geo.disk(0.04 * iod)) > 0


def _occlusion(
    original: np.ndarray,
    expectation: tuple[np.ndarray, np.ndarray],
    outline: np.ndarray,
    offset: np.ndarray,
    iod: float,
) -> np.ndarray:
    """Occluders on the original's geometry, against the texture's colour-matched look there
    (``expectation``: that look and the face mask it covers)."""
    expected, face = expectation
    shape = original.shape[:2]
    visible = face & ~_open_mouth(shape, outline, offset, iod)
    looks = _ColourMatch(original, expected, visible, SLOW * iod)(expected)
    eyes, lips = geo.feature_zones(shape, outline, offset, iod)
    lightness = (_lab(original)[..., 0], _lab(looks)[..., 0])
    worn = glasses.frames(*lightness, outline - offset, (face, eyes))
    return _occluders(original, looks, face, (eyes, lips), iod) | worn


def _occluders(
    original: np.ndarray,
    expected: np.ndarray,
    face: np.ndarray,
    zones: tuple[np.ndarray, np.ndarray],
    iod: float,
) -> np.ndarray:
    """Pixels in front of the face: far from both the skin's colour and the expected look.

    Seeds are never taken in the eyes and brows (the original's own dark features must not
    survive as 'occluders') and need a larger gap over the lips (``zones``: eyes and brows,
    lips); each seed region then grows over connected pixels of its own colour (anywhere in the
    box), so a solid occluder is kept whole even where it covers an eye.
    """
    eyes, lips = zones
    orig = _lab(original)
    skin_px = orig[face & ~eyes & ~lips]
    if len(skin_px) < 16:
        return np.zeros(face.shape, bool)
    med = np.median(skin_px, axis=0)
    scale = np.maximum(1.4826 * np.median(np.abs(skin_px - med), axis=0), _SCALE_FLOOR)
    gap = np.minimum(
        np.linalg.norm((orig - med) / scale, axis=2),
        np.linalg.norm((orig - _lab(expected)) / scale, axis=2),
    )
    far = gap > np.where(lips, 6.5, 4.0)
    # A flat patch of a colour far from the skin (paper, plastic, paint) is an occluder too.
    flat = _local_spread(orig) < 1.0
    seed = (face & ~eyes & (far | (flat & (gap > 2.5)))).astype(np.uint8)
    seed = cv2.morphologyEx(seed, cv2.MORPH_OPEN, geo.disk(0.04 * iod))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(seed, connectivity=8)
    min_area = max(9, int(0.004 * face.sum()))
    grown = np.zeros(face.shape, bool)
    for c in range(1, count):
        if stats[c, cv2.CC_STAT_AREA] >= min_area:
            grown |= _grow(orig, labels == c, scale)
    return cv2.dilate(grown.astype(np.uint8), geo.disk(1)) > 0


def _local_spread(lab: np.ndarray) -> np.ndarray:
    """Largest per-channel standard deviation over each pixel's 5 x 5 neighbourhood."""
    mean = cv2.blur(lab, (5, 5))
    var = cv2.blur(lab * lab, (5, 5)) - mean * mean
    return np.sqrt(np.maximum(var, 0.0)).max(axis=2)


def _grow(lab: np.ndarray, region: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``region`` plus the connected pixels whose colour is close to its mean colour."""
    colour = lab[region].mean(axis=0)
    spread = np.maximum(lab[region].std(axis=0), scale * 0.5)
    near = (np.linalg.norm((lab - colour) / spread, axis=2) < 2.0) | region
    _, labels = cv2.connectedComponents(near.astype(np.uint8), connectivity=8)
    touched = np.unique(labels[region])
    return np.isin(labels, touched[touched > 0])


def _soften(mask: np.ndarray, width: float) -> np.ndarray:
    """1 on ``mask``, falling off smoothly outside it over about ``width`` pixels."""
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(0.5, width))
    return np.maximum(soft, mask.astype(np.float32))


def _alpha(face: np.ndarray, mouth: np.ndarray, iod: float) -> np.ndarray:
    """Blend weight of the surrogate: feathered inside the target outline, zero over the open
    mouth (shown from the warped original), and exactly zero outside the outline."""
    radius = max(1.0, 0.1 * iod)
    inner = cv2.erode(face.astype(np.uint8), geo.disk(radius)).astype(np.float32)
    alpha = cv2.GaussianBlur(inner, (0, 0), radius / 2) * face
    if mouth.any():
        alpha *= 1.0 - _soften(mouth, 0.04 * iod)
    return alpha
