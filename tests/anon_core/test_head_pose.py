"""Head pose is kept while the surrogate's shape moves (issue 12: head-pose change <= 2.5 degrees).

The surrogate moves identity-bearing geometry part of the way to its donors' mean shape. Fitting
that mean (mostly frontal faces) to a turned face with a 2-D transform pulled the nose and eyes
towards frontal, and a head-pose fit read that as a turn of 6 degrees (median, LFW). The donors'
shape is now posed in 3-D like the original (``geometry.posed_like``) before it is blended.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.surrogate import geometry as geo
from faceveil.anon_core.surrogate.synthesis import Synthesizer
from tests.anon_core.lfw_world import lfw_world

FIT = np.array([27, 28, 29, 30, 31, 33, 35, 36, 39, 42, 45, 48, 54])


def _posed(yaw: float, pitch: float, roll: float, scale: float, shift) -> np.ndarray:
    """The mean head seen from a pose, by a scaled orthographic camera (cv2's rotation)."""
    rotation = cv2.Rodrigues(np.radians([pitch, yaw, roll]).astype(np.float64))[0]
    return scale * geo.mean_head() @ rotation[:2].T + np.asarray(shift, np.float64)


def _rotation(points68: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The judge: a pinhole camera (focal = image width) solvePnP on nose, eyes and mouth
    corners, a different camera model and fit from the method's scaled orthographic one."""
    h, w = shape[:2]
    camera = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float64)
    used = [*range(27, 48), 48, 54]
    ok, rvec, _ = cv2.solvePnP(geo.mean_head()[used], points68[used], camera, None)
    assert ok
    return cv2.Rodrigues(rvec)[0]


def _turn(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    rel = _rotation(a, shape).T @ _rotation(b, shape)
    return float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1.0, 1.0))))


def test_mean_head_is_the_installed_68_point_shape():
    head = geo.mean_head()
    assert head.shape == (68, 3)
    # the nose tip (30) lies in front of the eyes' outer corners (36, 45), the chin (8) below them
    assert head[30, 2] > head[36, 2] + 0.2 and head[30, 2] > head[45, 2] + 0.2
    assert head[8, 1] > head[36, 1] + 0.5
    assert head[45, 0] - head[36, 0] > 0.5


@pytest.mark.parametrize("pose", [(0, 0, 0), (30, 0, 0), (-20, 12, 5), (10, -15, -8)])
def test_head_projection_recovers_a_posed_mean_head(pose):
    points = _posed(*pose, scale=90.0, shift=(210.0, 160.0))
    assert np.abs(geo.head_projection(points, FIT) - points).max() < 1e-6


def test_a_donor_that_is_only_a_pose_takes_the_original_pose_exactly():
    own = _posed(25, 5, 3, 80.0, (100.0, 120.0))
    donor = _posed(-5, 0, 0, 60.0, (90.0, 100.0))  # another pose, no shape of its own
    assert np.abs(geo.posed_like(donor, own, FIT) - own).max() < 1e-6
    assert np.abs(geo.posed_like(own, own, FIT) - own).max() < 1e-9


def test_the_donor_shape_is_carried_to_the_original_pose():
    """A donor with a longer nose than the mean, seen frontally, posed like a face turned 30
    degrees: the result has the turned face's pose and the donor's longer nose. (The judge reads
    part of a longer nose as a nod: about 2 degrees here, against 30 for the donor as it is.)"""
    rng = np.random.default_rng(3)
    own = _posed(30, 0, 0, 80.0, (300.0, 250.0)) + rng.normal(0, 0.3, (68, 2))
    donor = _posed(0, 0, 0, 80.0, (300.0, 250.0))
    donor[31:36, 1] += 4.0  # nostrils lower: a longer nose
    out = geo.posed_like(donor, own, FIT)
    assert _turn(own, out, (500, 600)) < 3.0
    assert _turn(own, donor, (500, 600)) > 20.0
    nose = np.linalg.norm(out[33] - out[27]) - np.linalg.norm(own[33] - own[27])
    assert 2.5 < nose < 5.0


@pytest.fixture(scope="module")
def turned_faces():
    """(points, image shape) of the real LFW faces of the first pass, with the bank."""
    world = lfw_world()
    landmarks = Dlib68()
    out = []
    for rgbs in world.photos.values():
        for rgb in rgbs:
            faces = landmarks([rgb], world.detector([rgb]))[0]
            for k in np.flatnonzero(faces.extras["reliable"]):
                out.append((faces.landmarks68[k].astype(np.float64), rgb.shape))
    return world.context.bank, out


def test_surrogate_shape_keeps_the_head_pose_of_real_faces(turned_faces):
    """Finding (issue 12 table): head-pose change, median degrees, target <= 2.5 (6.0 with the
    2-D donor fit on these faces' target shapes). The shape must still move: identity-bearing
    geometry at least 0.025 inter-ocular distances on average after a similarity fit."""
    bank, faces = turned_faces
    synthesizer = Synthesizer(bank, privacy=0.5)
    turns, moved = [], []
    for n, (points, shape) in enumerate(faces):
        donors = bank.shapes[[(n + k * 7) % len(bank.shapes) for k in range(1, 5)]].mean(axis=0)
        target = synthesizer.target_shape(points, donors)
        turns.append(_turn(points, target, shape))
        aligned = geo.apply(geo.similarity_fit(target, points), target)
        iod = float(geo.eye_frame(points)[2])
        moved.append(np.linalg.norm(aligned - points, axis=1).mean() / iod)
    assert len(faces) >= 30
    assert np.median(turns) <= 2.5, f"median head-pose change {np.median(turns):.2f} degrees"
    assert np.mean(moved) >= 0.025, f"shape moved only {np.mean(moved):.4f} inter-ocular distances"
