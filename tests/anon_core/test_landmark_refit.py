"""Turned faces get their 68 points from a second fit started on the detector's five points
(issue 12: faces re-detected after the surrogate >= 99%; every miss was a masked face).

Started from the detector's box, dlib's predictor places its frontal mean shape in the box's
middle; on a face turned to one side it stays there, disagrees with the detector's five points,
and the face was masked. SCRFD (``../shared/models``, a detector faceveil does not use) is the
judge of where the points really are.
"""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.landmarks import Dlib68, agreement, five_from_68, start_rect
from tests.factories import shared_path

# Turned faces of lfw_dev whose box fit disagreed with CenterFace by 0.32 to 0.79 inter-ocular
# distances, and that SCRFD places within 0.08 of the refit (measured at this change).
TURNED = [
    "Charles_Moose/Charles_Moose_0003.jpg",
    "Dick_Cheney/Dick_Cheney_0007.jpg",
    "Donald_Rumsfeld/Donald_Rumsfeld_0005.jpg",
    "George_W_Bush/George_W_Bush_0004.jpg",
    "Mahathir_Mohamad/Mahathir_Mohamad_0001.jpg",
    "Nicole_Kidman/Nicole_Kidman_0009.jpg",
    "Ricardo_Lagos/Ricardo_Lagos_0004.jpg",
    "Richard_Myers/Richard_Myers_0007.jpg",
    "Roh_Moo-hyun/Roh_Moo-hyun_0003.jpg",
    "Shimon_Peres/Shimon_Peres_0006.jpg",
]
# Frontal faces for the properties: the first photo of each of the first people in lfw_dev.
FRONTAL_PEOPLE = 50


def _rgb(relative: str) -> np.ndarray:
    return decode_image(shared_path("data", "lfw_dev", "images", relative).read_bytes()).rgb


@pytest.fixture(scope="module")
def models():
    return build_detector("centerface", threads=1), Dlib68()


def _largest(faces: Faces) -> int:
    area = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
    return int(np.argmax(area))


def _box_fit(landmarks: Dlib68, rgb: np.ndarray, faces: Faces, k: int) -> np.ndarray:
    """The predictor's points from the detector's box alone, as before the refit."""
    x1, y1, x2, y2 = (int(v) for v in faces.boxes[k, :4])
    return landmarks._fit(rgb, (x1, y1, x2, y2))


@pytest.mark.parametrize("relative", TURNED)
def test_a_turned_face_gets_points_where_another_detector_puts_them(models, relative):
    """Finding: these faces were unreliable (masked). Now reliable, with five points within 0.15
    inter-ocular distances of SCRFD's (the box fit was 0.3 to 0.6 away)."""
    detector, landmarks = models
    rgb = _rgb(relative)
    faces = detector([rgb])[0]
    k = _largest(faces)
    before = _box_fit(landmarks, rgb, faces, k)
    assert agreement(before[None], faces.landmarks5[k : k + 1])[0] > landmarks.max_disagreement
    fitted = landmarks([rgb], [faces])[0]
    assert fitted.extras["reliable"][k]
    judge = build_detector("scrfd", model_root=shared_path("models"), threads=1)([rgb])[0]
    ref = judge.landmarks5[_largest(judge)].reshape(5, 2)
    iod = np.linalg.norm(ref[0] - ref[1])
    ours = five_from_68(fitted.landmarks68[k : k + 1]).reshape(5, 2)
    theirs = five_from_68(before[None]).reshape(5, 2)
    assert np.linalg.norm(ours - ref, axis=1).mean() / iod < 0.15
    assert np.linalg.norm(theirs - ref, axis=1).mean() / iod > 0.25


@pytest.fixture(scope="module")
def frontal(models):
    """(rgb, faces, k) of frontal faces whose box fit agrees with CenterFace within 0.1."""
    import csv

    detector, landmarks = models
    manifest = shared_path("data", "lfw_dev", "manifest.csv")
    firsts: dict[str, str] = {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            firsts.setdefault(row["identity"], row["path"].removeprefix("images/"))
    out = []
    for relative in list(firsts.values())[:FRONTAL_PEOPLE]:
        rgb = _rgb(relative)
        faces = landmarks([rgb], detector([rgb]))[0]
        k = _largest(faces)
        if agreement(faces.landmarks68[k : k + 1], faces.landmarks5[k : k + 1])[0] < 0.1:
            out.append((rgb, faces, k))
    assert len(out) >= 30
    return out


def test_the_start_rectangle_gives_back_a_frontal_fit(models, frontal):
    """``START_FIVE`` describes the predictor: started on a frontal face's detector points,
    it ends where the box fit ended (within 0.1 inter-ocular distances for 90% of faces)."""
    _, landmarks = models
    gaps = []
    for rgb, faces, k in frontal:
        rect = tuple(int(round(v)) for v in start_rect(faces.landmarks5[k]))
        again = landmarks._fit(rgb, rect)
        iod = np.linalg.norm(faces.landmarks5[k, :2] - faces.landmarks5[k, 2:4])
        gaps.append(np.linalg.norm(again - faces.landmarks68[k], axis=1).mean() / iod)
    assert np.quantile(gaps, 0.9) < 0.1, np.round(sorted(gaps), 3)


@pytest.mark.parametrize("shift", [0.7, 1.0])
def test_wrong_detector_points_are_never_trusted(models, frontal, shift):
    """Fail closed: when the detector's five points are wrong (moved ``shift`` inter-ocular
    distances in four directions), the box fit disagrees with them and the refit, started on
    them, must not follow them: the face stays unreliable (masked), its points those of the box
    fit. Without the spread test, 21% (0.7) and 44% (1.0) of such refits agreed with the wrong
    points on lfw_dev."""
    _, landmarks = models
    tried = 0
    for rgb, faces, k in frontal:
        five = faces.landmarks5[k].reshape(5, 2)
        iod = np.linalg.norm(five[0] - five[1])
        for angle in (0.0, 0.5 * np.pi, np.pi, 1.5 * np.pi):
            moved = five + shift * iod * np.array([np.cos(angle), np.sin(angle)])
            wrong = Faces(faces.boxes[k : k + 1], moved.reshape(1, 10).astype(np.float32))
            out = landmarks([rgb], [wrong])[0]
            tried += 1
            assert not out.extras["reliable"][0], (k, angle)
            assert np.array_equal(out.landmarks68[0], _box_fit(landmarks, rgb, wrong, 0))
    assert tried >= 120


def test_a_face_too_small_is_not_refitted(models):
    """The size floor still holds: a 24-pixel face stays unreliable whatever its points."""
    _, landmarks = models
    rgb = _rgb(TURNED[2])
    five = np.array([[15, 18, 28, 18, 22, 24, 17, 30, 27, 30]], np.float32)
    small = Faces(np.array([[10, 10, 34, 34, 0.99]], np.float32), five)
    assert not landmarks([rgb], [small])[0].extras["reliable"][0]
