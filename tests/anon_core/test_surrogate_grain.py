"""Issue 12 part 3: a surrogate carries the photo's own level of fine detail (``grain``).

The mean of six donors, enlarged onto a 500-pixel face, held 0.45-0.58 of the photo's detail in
each octave from 0 to 2 pixels on the cheeks before (renderer 6); the octaves are measured here
with ``bench_detail``'s difference of Gaussians (interquartile spreads), not the module's.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.bench_detail import cheeks, octave_spreads
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.surrogate import grain
from faceveil.anon_core.surrogate.synthesis import _context_outline
from tests.anon_core.lfw_world import lfw_world
from tests.factories import shared_path

pytestmark = pytest.mark.shared

KEY = b"test-surrogate-grain-key-0123456"


def _rgb(*parts: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(shared_path(*parts))), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def big_face():
    """obama3.jpg at full size (a face about 500 pixels tall, 124 between the eyes), its 68
    points and its surrogate from a first pass over 40 LFW photos."""
    world = lfw_world()
    photo = _rgb("data", "fixtures", "obama3.jpg")
    found = Dlib68()([photo], world.detector([photo]))[0]
    assert len(found) == 1
    method = Surrogate(KEY, world.context)
    result = FaceAnonymizer(AnonConfig(method="surrogate"), world.detector, method).batch([photo])
    assert result[0].output.methods == ("surrogate",)
    return photo, found.landmarks68[0].astype(np.float64), result[0].output.image


@pytest.mark.slow
def test_a_large_surrogate_is_as_detailed_as_its_photo(big_face):
    photo, points, out = big_face
    mask = cheeks(photo.shape, points)
    assert mask.sum() > 5000
    # 124 px between the eyes, 2.9 image pixels per texture pixel: octaves up to 2 px are filled.
    ratio = octave_spreads(out, mask) / octave_spreads(photo, mask)
    assert np.all(ratio > 0.75), ratio
    # Not overdone where noise was added; octaves 3 and 4 are the donors' own wrinkles and
    # folds, above the photo's before this change too (1.05 and 1.39).
    assert np.all(ratio[:3] < 1.2), ratio


@pytest.mark.slow
def test_the_low_passed_surroundings_get_the_photos_pixel_grain(big_face):
    photo, points, out = big_face
    zone = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillPoly(zone, [np.round(_context_outline(points)).astype(np.int32)], 1)
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    face = np.zeros_like(zone)
    cv2.fillConvexPoly(face, hull, 1)
    # The ring between the face (grown well past its blend) and the ellipse's feathered edge.
    ring = (cv2.erode(zone, np.ones((41, 41), np.uint8)) > 0) & ~(
        cv2.dilate(face, np.ones((61, 61), np.uint8)) > 0
    )
    assert ring.sum() > 5000
    before, after = octave_spreads(photo, ring), octave_spreads(out, ring)
    # The two finest octaves (sensor noise, JPEG) come back; the low-pass keeps the rest away.
    assert np.all((after[:2] / before[:2] > 0.6) & (after[:2] / before[:2] < 1.5)), (before, after)
    assert np.all(after[2:] < 0.6 * before[2:]), (before, after)


@pytest.mark.slow
def test_a_small_faces_surroundings_get_no_more_grain_than_its_skin():
    """At 20 pixels between the eyes, the ring around the face is hair and background edges;
    its grain follows the ring's own level only where that is lower than the skin's."""
    world = lfw_world()
    photo = cv2.resize(_rgb("data", "fixtures", "obama3.jpg"), None, fx=0.16, fy=0.16,
                       interpolation=cv2.INTER_AREA)  # fmt: skip
    found = Dlib68()([photo], world.detector([photo]))[0]
    points = found.landmarks68[0].astype(np.float64)
    method = Surrogate(KEY, world.context)
    out = FaceAnonymizer(AnonConfig(method="surrogate"), world.detector, method).batch([photo])
    assert out[0].output.methods == ("surrogate",)
    zone = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillPoly(zone, [np.round(_context_outline(points)).astype(np.int32)], 1)
    face = np.zeros_like(zone)
    cv2.fillConvexPoly(face, cv2.convexHull(np.round(points).astype(np.int32)), 1)
    ring = (cv2.erode(zone, np.ones((7, 7), np.uint8)) > 0) & ~(
        cv2.dilate(face, np.ones((11, 11), np.uint8)) > 0
    )
    assert ring.sum() > 300
    # Measured: the photo's ring 1.7 and 4.5 in the two finest octaves (hair), the output's
    # 1.3 and 1.9; taking the ring's own level gave it the hair's 4.5 as noise.
    own, given = octave_spreads(photo, ring), octave_spreads(out[0].output.image, ring)
    assert given[1] < 0.6 * own[1], (own, given)
    skin = octave_spreads(photo, cheeks(photo.shape, points))
    assert np.all(given[:2] > 0.5 * skin[:2]), (skin, given)  # the grain is there


def test_several_reference_masks_give_the_lowest_level(skin):
    sharp, smooth = skin
    mask = np.ones(sharp.shape[:2], bool)
    inner = np.zeros_like(mask)
    inner[16:-16, 16:-16] = True
    half = (sharp.astype(np.float32) - cv2.GaussianBlur(sharp, (0, 0), 3.0)) * 0.5 + smooth
    # One reference image, its left half the skin, its right half the skin's detail halved.
    pair = np.hstack([sharp.astype(np.float32), half])
    left = np.zeros(pair.shape[:2], bool)
    left[:, : sharp.shape[1]] = True
    noise = grain.missing_detail((pair, [left, ~left]), (smooth, mask), iod=124.0, seed=5)
    alone = grain.missing_detail((pair, ~left), (smooth, mask), iod=124.0, seed=5)
    assert np.array_equal(noise, alone)
    lowered = octave_spreads(smooth.astype(np.float32) + noise[..., None], inner)
    assert np.all(lowered[:3] < 0.8 * octave_spreads(sharp, inner)[:3])


@pytest.fixture(scope="module")
def skin():
    """A patch of real skin (obama3.jpg's forehead, 144 x 72 pixels) and a smoothed copy."""
    photo = _rgb("data", "fixtures", "obama3.jpg")
    patch = photo[262:334, 716:860].copy()
    return patch, cv2.GaussianBlur(patch, (0, 0), 3.0)


def test_missing_detail_restores_each_octave_of_real_skin(skin):
    sharp, smooth = skin
    mask = np.ones(sharp.shape[:2], bool)
    inner = np.zeros_like(mask)
    inner[16:-16, 16:-16] = True  # away from the borders the blurs pad
    noise = grain.missing_detail((sharp, mask), (smooth, mask), iod=124.0, seed=7)
    restored = smooth.astype(np.float32) + noise[..., None]
    target, before, after = (octave_spreads(x, inner) for x in (sharp, smooth, restored))
    assert np.all(before[:4] < 0.6 * target[:4]) and before[4] < target[4]
    # The 4-8 px octave has few independent samples on a 144 x 72 patch: a looser bound.
    assert np.allclose(after[:4], target[:4], rtol=0.15), (target, after)
    assert after[4] == pytest.approx(target[4], rel=0.3), (target, after)


def test_no_pixel_of_the_reference_reaches_the_noise(skin):
    sharp, smooth = skin
    mask = np.ones(sharp.shape[:2], bool)
    noise = grain.missing_detail((sharp, mask), (smooth, mask), iod=124.0, seed=7)
    detail = sharp.astype(np.float32).mean(axis=2) - cv2.GaussianBlur(
        sharp.astype(np.float32).mean(axis=2), (0, 0), 2.0
    )
    assert abs(np.corrcoef(noise.ravel(), detail.ravel())[0, 1]) < 0.05
    # The same levels from another photo's skin give the same noise: only levels are used.
    mirrored = sharp[::-1, ::-1].copy()
    again = grain.missing_detail((mirrored, mask), (smooth, mask), iod=124.0, seed=7)
    assert np.allclose(again, noise, atol=0.3 * float(noise.std()))


def test_the_noise_is_fixed_by_its_seed(skin):
    sharp, smooth = skin
    mask = np.ones(sharp.shape[:2], bool)
    one = grain.missing_detail((sharp, mask), (smooth, mask), 124.0, seed=(3, 1))
    assert np.array_equal(one, grain.missing_detail((sharp, mask), (smooth, mask), 124.0, (3, 1)))
    other = grain.missing_detail((sharp, mask), (smooth, mask), 124.0, seed=(3, 2))
    assert abs(np.corrcoef(one.ravel(), other.ravel())[0, 1]) < 0.05


def test_nothing_is_added_where_nothing_is_missing(skin):
    sharp, _ = skin
    mask = np.ones(sharp.shape[:2], bool)
    assert not grain.missing_detail((sharp, mask), (sharp, mask), 124.0, seed=1).any()
    tiny = np.zeros_like(mask)
    tiny[:4, :4] = True  # too few pixels to measure
    assert not grain.missing_detail((sharp, tiny), (sharp * 0, tiny), 124.0, seed=1).any()


def test_octaves_filled_grow_with_the_face_and_can_be_capped(skin):
    # Coarse edges 0.5, 1, 2, 4, 8, 16 px against 0.07 inter-ocular distances.
    assert [grain.octaves(iod) for iod in (5, 10, 20, 40, 80, 124, 300)] == [1, 1, 2, 3, 4, 5, 6]
    # Octaves finer than one texture pixel as drawn (image pixels per texture pixel), at least
    # the two finest: lfw_dev's faces (drawn at about the texture's size) get the grain only.
    assert [grain.octaves(124, e) for e in (0.0, 1.0, 2.9, 4.0, 30.0)] == [2, 2, 3, 4, 5]
    assert grain.octaves(10, 0.0) == 1
    sharp, smooth = skin
    mask = np.ones(sharp.shape[:2], bool)
    inner = np.zeros_like(mask)
    inner[16:-16, 16:-16] = True
    capped = grain.missing_detail((sharp, mask), (smooth, mask), 124.0, 7, enlarged=0.0)
    levels = octave_spreads(smooth.astype(np.float32) + capped[..., None], inner)
    # Two octaves cannot always be matched exactly (``grain._pieces``): the nearest fit put
    # this skin's finest 13% over, so it is scaled down and the second falls a little short.
    target = octave_spreads(sharp, inner)[:2]
    assert np.all((levels[:2] > 0.7 * target) & (levels[:2] < 1.05 * target)), (levels, target)
    alone = octave_spreads(np.repeat(capped[..., None], 3, axis=2), inner)
    assert np.all(alone[3:] < 0.15 * alone[1]), alone  # next to nothing past the cap


def test_noise_piece_response_matches_white_noise_through_opencv():
    # The noise comes in half-octave pieces: edges 0, 0.5, 0.71, 1, ... 8 px for 5 octaves.
    pieces = (0.0, *(0.5 * 2 ** (i / 2) for i in range(9)))
    white = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    blurs = [white if s == 0 else cv2.GaussianBlur(white, (0, 0), s) for s in pieces]
    spread, leak = grain.response(5)
    assert spread.shape == (9,) and leak.shape == (5, 9)
    for k in range(9):
        piece = (blurs[k] - blurs[k + 1])[32:-32, 32:-32]
        assert piece.std() == pytest.approx(spread[k], rel=0.03)
    # Piece 1 (0.5-0.71 px) at unit spread, seen through octaves 0 and 1 by OpenCV's own blurs.
    one = (blurs[1] - blurs[2]) / spread[1]
    for j, (fine, coarse) in enumerate(((0.0, 0.5), (0.5, 1.0))):
        low = one if fine == 0 else cv2.GaussianBlur(one, (0, 0), fine)
        seen = (low - cv2.GaussianBlur(one, (0, 0), coarse))[32:-32, 32:-32]
        assert seen.var() == pytest.approx(leak[j, 1], rel=0.05)
