"""Issue 12 part 4: one decision per face, for every method, on real photos and real models.

A face detected twice (a box inside the box, as a dataset's own ``face_bboxes`` or a second
detection gives it) used to get two decisions: blur and pixelate drew a second, doubled box
inside the first; the surrogate drew its face and counted it twice, and a mask fallback covered
the grown region around the face. The detections of one face are now merged before any method
runs (``FaceAnonymizer.prepare_faces``), so the face gets one region, one surrogate or one mask
over its box. Skipped with a reason when ../shared is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.anon_core import AnonConfig, FaceAnonymizer
from faceveil.anon_core.accel import accelerated_anonymizer
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.faces import Faces, face_regions, one_per_face
from faceveil.anon_core.known import WithBoxes
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods import create
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.surrogate import collect_faces
from tests.anon_core.lfw_world import lfw_world
from tests.factories import rgb

KEY = b"one-decision-test-key-0123456789"
GREY = (96, 96, 96)

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real LFW photo whose one face CenterFace finds once."""
    return lfw_world().photos[0][0]


@pytest.fixture(scope="module")
def detection(photo) -> np.ndarray:
    found = FaceAnonymizer(AnonConfig(method="blur"))(photo).faces
    assert len(found) == 1, "this photo no longer has exactly one detected face"
    return found.boxes[0, :4].astype(np.float64)


def _inner(box: np.ndarray, margin: float = 0.2) -> np.ndarray:
    """A box inside ``box`` (``margin`` of its size in from each side): the same face again."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return np.array([[x1 + dx, y1 + dy, x2 - dx, y2 - dy]])


def _covers(outer: np.ndarray, inner: np.ndarray) -> bool:
    return bool((outer[:2] <= inner[:2]).all() and (outer[2:] >= inner[2:]).all())


@pytest.mark.parametrize("name", ["blur", "pixelate", "mask"])
def test_a_face_given_twice_gets_one_region(photo, detection, name):
    """One rewrite over one region that covers both detections' regions: the output inside it
    is exactly the method's rewrite of the original there (a second rewrite of the inner box
    would leave its edge in the picture), and nothing outside it changed."""
    anonymizer = FaceAnonymizer(AnonConfig(method=name))
    result = anonymizer(WithBoxes(photo, _inner(detection)))
    assert result.ok
    assert len(result.faces) == 1 and result.output.methods == (name,)
    (x1, y1, x2, y2), method = result.output.regions[0], create(name)
    for box in (detection[None], _inner(detection)):
        single = Faces(
            np.concatenate([box, [[1.0]]], axis=1).astype(np.float32), np.zeros((1, 10), np.float32)
        )
        assert _covers(result.output.regions[0], face_regions(single, photo.shape)[0]), box
    out = result.output.image
    np.testing.assert_array_equal(out[y1:y2, x1:x2], method.rewrite(photo[y1:y2, x1:x2].copy()))
    outside = np.ones(photo.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], photo[outside])


def test_the_device_stage_merges_the_same_way(photo, detection):
    """The accelerated stage (torch, here on the CPU) anonymizes the faces the pipeline merged."""
    given = WithBoxes(photo, _inner(detection))
    plain = FaceAnonymizer(AnonConfig(method="blur"))(given)
    device = accelerated_anonymizer(AnonConfig(method="blur", device="cpu"))(given)
    assert len(device.faces) == 1 and device.output.methods == ("blur",)
    np.testing.assert_array_equal(device.output.regions, plain.output.regions)
    diff = np.abs(device.output.image.astype(np.int16) - plain.output.image.astype(np.int16))
    assert diff.max() <= 3


def test_two_people_side_by_side_stay_two_faces():
    """Overlapping boxes of two people are not one face: both keep their own region."""
    image = rgb("two_people.jpg")
    found = FaceAnonymizer(AnonConfig(method="blur"))(image).faces
    assert len(found) == 2
    a, b = found.boxes[:, :4].astype(np.float64)
    # widen both toward each other until they overlap, as loose boxes of neighbours do
    left, right = (a, b) if a[0] < b[0] else (b, a)
    gap = right[0] - left[2]
    left[2] += gap / 2 + 0.15 * (left[2] - left[0])
    right[0] -= gap / 2 + 0.15 * (right[2] - right[0])
    result = FaceAnonymizer(AnonConfig(method="blur", threshold=1.0))(
        WithBoxes(image, np.stack([left, right]))
    )
    assert len(result.faces) == 2 and result.output.methods == ("blur", "blur")


def test_merged_box_covers_every_region_of_its_detections():
    """Tall and wide boxes of one face, offset: the merged face's region (any grow) holds both
    regions, although neither box contains the other."""
    boxes = np.array([[100, 100, 150, 220, 0.9], [90, 130, 170, 200, 0.8]], np.float32)
    faces = Faces(boxes, np.zeros((2, 10), np.float32))
    merged = one_per_face(faces)
    assert len(merged) == 1 and merged.boxes[0, 4] == pytest.approx(0.9)
    for grow in (0.0, 0.3, 1.0, 2.0):
        whole = face_regions(merged, (400, 400), grow)[0]
        for region in face_regions(faces, (400, 400), grow):
            assert _covers(whole, region), (grow, whole, region)


# ---- the surrogate: one surrogate, no grey; a mask fallback covers the face box ---------------


@pytest.fixture(scope="module")
def surrogate_run():
    world = lfw_world()
    method = Surrogate(KEY, world.context)
    return method, FaceAnonymizer(AnonConfig(method="surrogate", threads=1), world.detector, method)


def test_a_face_given_twice_gets_one_surrogate_and_no_grey(surrogate_run, photo, detection):
    method, anonymizer = surrogate_run
    result = anonymizer(WithBoxes(photo, _inner(detection)))
    assert result.ok
    assert len(result.faces) == 1 and result.output.methods == ("surrogate",)
    assert len(result.metadata()["faces"]) == 1
    x1, y1, x2, y2 = result.output.regions[0]
    grey = (result.output.image[y1:y2, x1:x2] == GREY).all(axis=2)
    assert grey.sum() == 0, f"{grey.sum()} mask pixels drawn over the surrogate"
    assert (result.output.image != photo).any(axis=2).sum() > 1000


def test_a_mask_fallback_covers_the_face_box_only(surrogate_run, photo, detection):
    """A face whose landmarks cannot be trusted (here, two boxes of one face that the detector
    does not see: template landmarks) is masked once, over the merged face box, not the grown
    region around it."""
    _, anonymizer = surrogate_run
    blind = FaceAnonymizer(
        AnonConfig(method="surrogate", threshold=1.0, threads=1), None, anonymizer.method
    )
    result = blind(WithBoxes(photo, np.concatenate([detection[None], _inner(detection)])))
    assert result.ok and result.output.methods == ("mask",)
    x1, y1, x2, y2 = (
        np.floor(detection[:2]).astype(int).tolist() + np.ceil(detection[2:]).astype(int).tolist()
    )
    changed = (result.output.image != photo).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert xs.min() >= x1 and ys.min() >= y1 and xs.max() < x2 and ys.max() < y2
    assert (result.output.image[y1:y2, x1:x2] == GREY).all()
    np.testing.assert_array_equal(result.output.regions[0], [x1, y1, x2, y2])


def test_two_located_faces_in_one_box_stay_two():
    """Nested boxes whose reliable landmarks put the faces apart are two people (a face in
    front of another): each keeps its decision. With landmarks that agree, they are one."""
    boxes = np.array([[0, 0, 200, 200, 0.9], [40, 40, 160, 160, 0.8]], np.float32)
    apart = np.array(
        [
            [50, 60, 90, 60, 70, 90, 55, 120, 85, 120],
            [110, 80, 150, 80, 130, 110, 115, 140, 145, 140],
        ],
        np.float32,
    )
    reliable = {"reliable": np.array([True, True])}
    assert len(one_per_face(Faces(boxes, apart, extras=reliable))) == 2
    same = np.stack([apart[0], apart[0] + 3.0])
    assert len(one_per_face(Faces(boxes, same, extras=reliable))) == 1
    unsure = {"reliable": np.array([True, False])}
    assert len(one_per_face(Faces(boxes, apart, extras=unsure))) == 1


# ---- the surrogate's first pass: a face detected twice is one row of the face table -----------


class _DetectsTwice:
    """A real detector whose every face is found a second time: a box 5% in from each side, the
    same five points, a lower score (what a detector at two scales gives)."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.name = detector.name

    def __call__(self, images):
        out = []
        for found in self.detector(images):
            inner = found.boxes.copy()
            inner[:, :4] = [_inner(b[:4], 0.05)[0] for b in found.boxes]
            inner[:, 4] *= 0.9
            out.append(
                Faces(
                    np.concatenate([found.boxes, inner]),
                    np.concatenate([found.landmarks5, found.landmarks5]),
                )
            )
        return out


def test_the_first_pass_merges_a_face_detected_twice(photo):
    """Both detections have reliable landmarks (so each would be a row of its own), yet the
    table has one row and at most one donor candidate, as the second pass has one face."""
    detector = _DetectsTwice(lfw_world().detector)
    landmarks = Dlib68()
    twice = landmarks([photo], detector([photo]))[0]
    assert len(twice) == 2 and twice.extras["reliable"].all(), "the test needs two usable rows"
    table = collect_faces([("s", photo)], detector, landmarks, DlibEmbedder())
    assert table.ids == ("s#0",)
    assert table.embeddings.shape == (1, 128) and table.skin.shape == (1, 3)
    assert table.traits is not None and table.traits.shape[0] == 1
    assert len(table.donors) <= 1
