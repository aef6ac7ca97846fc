"""Detectors on real faces: counts on fixtures, fixed shapes, small faces in large photos."""

import cv2
import numpy as np
import pytest

from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.detectors.base import MultiScaleDetector
from tests.factories import rgb, shared_path


@pytest.fixture(scope="module")
def centerface():
    return build_detector("centerface")


@pytest.fixture(scope="module", params=["det_500m.onnx", "scrfd_2.5g_bnkps.onnx"])
def scrfd(request):
    root = shared_path("models", request.param).parent
    from faceveil.anon_core.detectors.scrfd import SCRFD

    return MultiScaleDetector(SCRFD(root, model_name=request.param))


@pytest.mark.parametrize(("name", "count"), [("astronaut.png", 1), ("two_people.jpg", 2)])
def test_centerface_counts_faces(centerface, name, count):
    faces = centerface([rgb(name)])[0]
    assert len(faces) == count
    assert faces.boxes.shape == (count, 5) and faces.landmarks5.shape == (count, 10)
    assert faces.boxes.dtype == np.float32


@pytest.mark.parametrize(("name", "count"), [("astronaut.png", 1), ("two_people.jpg", 2)])
def test_scrfd_counts_faces(scrfd, name, count):
    assert len(scrfd([rgb(name)])[0]) == count


def test_no_face_gives_empty_fixed_shapes(centerface):
    faces = centerface([np.full((200, 300, 3), 127, np.uint8)])[0]
    assert faces.boxes.shape == (0, 5) and faces.landmarks5.shape == (0, 10)


def test_landmarks_fall_inside_their_box(centerface):
    faces = centerface([rgb("astronaut.png")])[0]
    x1, y1, x2, y2, _ = faces.boxes[0]
    pts = faces.landmarks5[0].reshape(5, 2)
    assert np.all((pts[:, 0] > x1) & (pts[:, 0] < x2) & (pts[:, 1] > y1) & (pts[:, 1] < y2))
    assert pts[0, 0] < pts[1, 0]  # image-left eye first


def test_batch_of_mixed_sizes_keeps_order(centerface):
    images = [rgb("two_people.jpg"), rgb("astronaut.png"), rgb("obama_small.jpg")]
    counts = [len(f) for f in centerface(images)]
    assert counts == [2, 1, 1]


def _small_faces_photo(face_px: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A 4000 x 3000 textured photo with four astronaut heads whose faces are ``face_px`` wide."""
    head = rgb("astronaut.png")[20:240, 130:330]
    small = cv2.resize(head, None, fx=face_px / 88, fy=face_px / 88, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
    big = cv2.GaussianBlur(noise, (0, 0), 8)
    spots = [(1500, 2000), (100, 3850), (2850, 30), (1000, 1010)]
    for y, x in spots:
        big[y : y + small.shape[0], x : x + small.shape[1]] = small
    return big, spots


@pytest.mark.slow
def test_40_pixel_faces_found_in_4000x3000(centerface):
    image, spots = _small_faces_photo(40)
    faces = centerface([image])[0]
    centres = (faces.boxes[:, :2] + faces.boxes[:, 2:4]) / 2
    for y, x in spots:
        near = np.abs(centres - (x + 45, y + 60)).max(axis=1) < 60
        assert near.any(), f"face near ({x}, {y}) missed"
