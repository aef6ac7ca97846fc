"""Known face boxes (a dataset's own ``face_bboxes``) join the detector's faces: recall first."""

import numpy as np
import pytest

from faceveil.anon_core import AnonConfig, FaceAnonymizer, Faces
from faceveil.anon_core.imageio import decode_image, encode_image
from faceveil.anon_core.known import BoxesError, WithBoxes, join_known, parse_boxes, to_pixels
from tests.factories import shared_path


@pytest.fixture(scope="module")
def lfw_face() -> bytes:
    """A real LFW photo (250 x 250, one face near the centre)."""
    root = shared_path("data", "lfw_dev", "images")
    return sorted(root.glob("*/*.jpg"))[0].read_bytes()


@pytest.fixture(scope="module")
def blind():
    """A detector that finds nothing: its threshold is above every possible score."""
    return FaceAnonymizer(AnonConfig(method="blur", threshold=1.0))


def _box_change(result, box) -> tuple[float, float]:
    """Mean absolute pixel change inside ``box`` (pixels) and in the top 8 rows, outside the
    grown region (blur reaches 0.54 of the box's height above it: row 10 for this box)."""
    before = result.original.rgb.astype(np.int16)
    after = decode_image(result.encoded).rgb.astype(np.int16)
    x1, y1, x2, y2 = box
    inside = np.abs(after[y1:y2, x1:x2] - before[y1:y2, x1:x2]).mean()
    return float(inside), float(np.abs(after[:8] - before[:8]).mean())


def test_a_face_the_detector_misses_is_anonymized_when_its_box_is_given(blind, lfw_face):
    missed = blind(lfw_face)
    assert missed.status == "no_face"  # the detector alone lets this face through
    given = blind(WithBoxes(lfw_face, np.array([[0.34, 0.28, 0.66, 0.72]]), normalized=True))
    assert given.status == "anonymized" and len(given.faces) == 1
    assert given.metadata()["faces"][0]["bbox"] == [85.0, 70.0, 165.0, 180.0]
    inside, top_rows = _box_change(given, (85, 70, 165, 180))
    assert inside > 8.0, "the given box was not anonymized"
    assert top_rows < 3.0, "pixels far from the box changed"


def test_pixel_boxes_and_a_box_the_detector_also_found_counts_once(lfw_face):
    seeing = FaceAnonymizer(AnonConfig(method="blur"))
    found = seeing(lfw_face).faces
    assert len(found) == 1
    same = found.boxes[:, :4] + 2.0  # the same face, a little off: not a second face
    elsewhere = np.array([[2.0, 2.0, 40.0, 40.0]])  # a face the detector did not report
    result = seeing(WithBoxes(lfw_face, np.concatenate([same, elsewhere])))
    assert len(result.faces) == 2
    np.testing.assert_allclose(result.faces.boxes[1], [2, 2, 40, 40, 1.0])


def test_join_known_keeps_detections_and_adds_only_uncovered_boxes():
    found = Faces(np.array([[10, 10, 50, 50, 0.9]], np.float32), np.zeros((1, 10), np.float32))
    known = np.array([[12.0, 12.0, 52.0, 52.0], [100.0, 100.0, 140.0, 150.0]])
    joined = join_known(found, known)
    assert len(joined) == 2
    np.testing.assert_array_equal(joined.boxes[0], found.boxes[0])
    np.testing.assert_allclose(joined.boxes[1], [100, 100, 140, 150, 1.0])
    lm = joined.landmarks5[1].reshape(5, 2)
    assert ((lm >= [100, 100]) & (lm <= [140, 150])).all()  # landmarks inside the given box
    assert join_known(Faces.empty(), known).boxes.shape == (2, 5)


def test_boxes_are_scaled_clipped_and_bad_ones_refused():
    image = encode_image(np.zeros((100, 200, 3), np.uint8), "png")
    scaled = to_pixels(
        WithBoxes(image, [[0.1, 0.2, 0.5, 1.5], [1.1, 0.0, 1.3, 0.5]], True), (100, 200)
    )
    np.testing.assert_allclose(scaled, [[20, 20, 100, 100]])  # clipped; wholly outside dropped
    assert parse_boxes(None).shape == (0, 4) and parse_boxes([]).shape == (0, 4)
    for bad in ([[1, 2, 3]], [[0, 0, float("nan"), 1]], [[5, 5, 1, 9]], "0 0 1 1", [["a"] * 4]):
        with pytest.raises(BoxesError):
            parse_boxes(bad)


def test_a_known_box_beside_the_face_is_never_given_a_surrogate():
    """Review finding: a known box carries template landmarks placed by the box alone. When the
    box sat 0.3 of its width beside a real face, dlib's box fit could agree with that template,
    the face counted as reliable, and a surrogate would have been drawn where the template says
    while the face itself stayed (on these LFW faces: some of the 60 shifted boxes). Template
    points are never trusted now: every such face is unreliable, so the surrogate masks it."""
    import csv

    from faceveil.anon_core.detectors import build_detector
    from faceveil.anon_core.known import is_template
    from faceveil.anon_core.landmarks import Dlib68, agreement

    detector, landmarks = build_detector("centerface", threads=1), Dlib68()
    root = shared_path("data", "lfw_dev")
    with open(root / "manifest.csv", newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)][:30]
    agreed = 0
    for path in paths:
        rgb = decode_image((root / path).read_bytes()).rgb
        found = detector([rgb])[0]
        box = found.boxes[int(np.argmax(found.boxes[:, 4]))]
        width = float(box[2] - box[0])
        for dx in (-0.3 * width, 0.3 * width):
            known = to_pixels(WithBoxes(rgb, (box[:4] + [dx, 0, dx, 0])[None]), rgb.shape)
            face = join_known(Faces.empty(), known)
            assert is_template(face).all()
            out = landmarks([rgb], [face])[0]
            agreed += int(agreement(out.landmarks68, face.landmarks5)[0] <= 0.25)
            assert not out.extras["reliable"][0], path
    assert agreed >= 1  # the template fooled the agreement test on at least one of them
    assert not is_template(found).any()


def test_template_points_are_recognized_in_very_wide_images():
    """Review finding: a fixed 1e-3 tolerance missed template points past x = 16,384, where
    float32 rounding is larger; such a face could be trusted again. Boxes across a
    100,000-pixel panorama are all recognized, and moved points are not."""
    from faceveil.anon_core.known import is_template

    rng = np.random.default_rng(0)
    x1 = rng.uniform(0, 99_000, 500)
    y1 = rng.uniform(0, 4_000, 500)
    size = rng.uniform(24, 900, 500)
    known = np.stack([x1, y1, x1 + size, y1 + size * 1.2], axis=1)
    faces = join_known(Faces.empty(), known)
    assert is_template(faces).all()
    moved = Faces(faces.boxes, faces.landmarks5 + np.float32(0.5))
    assert not is_template(moved).any()
