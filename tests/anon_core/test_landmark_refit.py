"""Turned faces get their 68 points from a second fit started on the detector's five points
(issue 12: faces re-detected after the surrogate >= 99%; every miss was a masked face).

Started from the detector's box, dlib's predictor places its frontal mean shape in the box's
middle; on a face turned to one side it stays there, disagrees with the detector's five points,
and the face was masked. SCRFD (``../shared/models``, a detector faceveil does not use) is the
judge of where the points really are.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.faces import Faces, iou_matrix, matched
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.landmarks import Dlib68, agreement, five_from_68, points_in, start_rect
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from tests.anon_core.lfw_world import lfw_world
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


@pytest.fixture(scope="module")
def scrfd():
    return build_detector("scrfd", model_root=shared_path("models"), threads=1)


def _largest(faces: Faces) -> int:
    area = (faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])
    return int(np.argmax(area))


def _same_face(found: Faces, box: np.ndarray) -> int:
    """Index of the detection in ``found`` that overlaps ``box`` most (IoU at least 0.5)."""
    ious = iou_matrix(found.boxes, np.asarray(box, np.float64)[None, :4])[:, 0]
    assert len(ious) and ious.max() >= 0.5, ious
    return int(np.argmax(ious))


@pytest.mark.parametrize("relative", TURNED)
def test_a_turned_face_gets_points_where_another_detector_puts_them(models, scrfd, relative):
    """Finding: these faces were unreliable (masked), as they still are without the refit. Now
    reliable, with five points within 0.15 inter-ocular distances of SCRFD's (the box fit was
    more than 0.25 away)."""
    detector, landmarks = models
    rgb = _rgb(relative)
    faces = detector([rgb])[0]
    k = _largest(faces)
    before = landmarks.box_fit(rgb, faces.boxes[k])
    assert agreement(before[None], faces.landmarks5[k : k + 1])[0] > landmarks.max_disagreement
    assert not Dlib68(refit=False)([rgb], [faces])[0].extras["reliable"][k]
    fitted = landmarks([rgb], [faces])[0]
    assert fitted.extras["reliable"][k]
    judge = scrfd([rgb])[0]
    ref = judge.landmarks5[_same_face(judge, faces.boxes[k])].reshape(5, 2)
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


def _moved(five: np.ndarray, shift: float, angle: float) -> np.ndarray:
    iod = np.linalg.norm(five[0] - five[1])
    return five + shift * iod * np.array([np.cos(angle), np.sin(angle)])


def _scaled(five: np.ndarray, factor: float, angle: float) -> np.ndarray:
    centre = five.mean(axis=0)
    return centre + factor * (five - centre)


@pytest.mark.parametrize(
    ("wrong_by", "amount"),
    [(_moved, 0.5), (_moved, 0.7), (_moved, 1.0), (_scaled, 2.5), (_scaled, 0.4)],
)
def test_wrong_detector_points_are_never_trusted(models, frontal, wrong_by, amount):
    """Fail closed: when the detector's five points are wrong (moved 0.5 to 1 inter-ocular
    distance in four directions, or scaled about their centre), the box fit disagrees with them
    and the refit, started on them, must not follow them: the face stays unreliable (masked),
    its points those of the box fit. Without the spread tests, 21% (0.7) and 44% (1.0) of such
    refits agreed with the wrong points on lfw_dev; with them, 2 of 6,696 (279 faces, 8
    directions, 0.5 to 1): this test checks 4 directions of the faces below."""
    _, landmarks = models
    tried = 0
    for rgb, faces, k in frontal:
        five = faces.landmarks5[k].reshape(5, 2)
        for angle in (0.0, 0.5 * np.pi, np.pi, 1.5 * np.pi):
            wrong_five = wrong_by(five, amount, angle).reshape(1, 10).astype(np.float32)
            wrong = Faces(faces.boxes[k : k + 1], wrong_five)
            out = landmarks([rgb], [wrong])[0]
            tried += 1
            assert not out.extras["reliable"][0], (k, angle)
            assert np.array_equal(out.landmarks68[0], landmarks.box_fit(rgb, wrong.boxes[0]))
    assert tried >= 120


def test_odd_points_are_not_refitted(models):
    """Points with no width or not finite never start a refit (the face stays unreliable and
    keeps its box fit; nothing raises)."""
    _, landmarks = models
    rgb = _rgb(TURNED[2])
    box = np.array([[60, 70, 160, 190, 0.99]], np.float32)
    for five in (np.full((1, 10), 100.0), np.full((1, 10), np.nan)):
        out = landmarks([rgb], [Faces(box, five.astype(np.float32))])[0]
        assert not out.extras["reliable"][0]
        assert np.array_equal(out.landmarks68[0], landmarks.box_fit(rgb, box[0]))


def test_a_face_too_small_is_not_refitted(models, monkeypatch):
    """The size floor still holds: a turned face shrunk to 24 pixels stays unreliable, and no
    refit is even tried."""
    detector, landmarks = models
    rgb = _rgb(TURNED[2])
    faces = detector([rgb])[0]
    k = _largest(faces)
    scale = 24.0 / float(faces.boxes[k, 2] - faces.boxes[k, 0])
    small_rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    small = Faces(
        (faces.boxes[k : k + 1] * [scale, scale, scale, scale, 1]).astype(np.float32),
        (faces.landmarks5[k : k + 1] * scale).astype(np.float32),
    )

    def no_refit(*args):
        raise AssertionError("a face under min_size was refitted")

    monkeypatch.setattr(landmarks, "_refit", no_refit)
    assert not landmarks([small_rgb], [small])[0].extras["reliable"][0]


def test_an_output_is_measured_from_its_own_detection(models):
    """``points_in`` (what eval and the benchmarks measure an output with) fits from the
    image's own detection: on a turned face it gives the refit, with no detection the box fit,
    and the five points of another image (an original's) cannot steer it."""
    detector, landmarks = models
    rgb = _rgb(TURNED[0])
    found = detector([rgb])[0]
    k = _largest(found)
    box = found.boxes[k]
    refit = landmarks([rgb], [found])[0].landmarks68[k]
    assert np.array_equal(points_in(landmarks, rgb, box, found), refit)
    alone = landmarks.box_fit(rgb, box)
    assert np.array_equal(points_in(landmarks, rgb, box, Faces.empty()), alone)
    assert not np.array_equal(refit, landmarks.box_fit(rgb, box))


def test_turned_faces_get_a_surrogate_that_another_detector_finds(scrfd):
    """Finding (issue 12's table: re-detection 95.7%, later 97.1%, against 99%; every miss was a
    masked face). These turned faces were masked (their box fit is unreliable, see above); each
    now gets a surrogate, and SCRFD, a detector faceveil does not use, finds a face there."""
    world = lfw_world()
    method = Surrogate(b"team-key-0123456789abcdef-012345", world.context)
    anonymize = FaceAnonymizer(AnonConfig(threads=1), world.detector, method)
    # Shimon_Peres_0006 is left out: the 20 people of this small bank hold only 7 donors of his
    # gender and age band, 8 needed, so he is masked for that reason (not on the full lfw_dev)
    for relative in [r for r in TURNED if not r.startswith("Shimon_Peres")]:
        result = anonymize(shared_path("data", "lfw_dev", "images", relative).read_bytes())
        faces = result.metadata()["faces"]
        box = np.asarray(max(faces, key=lambda f: f["bbox"][2] - f["bbox"][0])["bbox"])
        central = [f for f in faces if np.array_equal(f["bbox"], box)][0]
        assert central["method"] == "surrogate", relative
        assert matched(scrfd([decode_image(result.encoded).rgb])[0], box), relative
