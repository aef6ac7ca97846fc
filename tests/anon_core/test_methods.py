"""Every baseline changes the whole face region and nothing outside it; the registry builds them."""

import numpy as np
import pytest

from faceveil.anon_core import methods
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.faces import Faces, face_regions
from tests.factories import rgb


@pytest.fixture(scope="module")
def photo_and_faces():
    image = rgb("two_people.jpg")
    return image, build_detector("centerface")([image])[0]


@pytest.mark.parametrize("name", ["blur", "pixelate", "mask"])
def test_method_changes_face_regions_only(name, photo_and_faces):
    image, faces = photo_and_faces
    out = methods.create(name)(image, faces)
    assert out.image.shape == image.shape and out.image.dtype == np.uint8
    assert out.methods == (name,) * len(faces)
    inside = np.zeros(image.shape[:2], bool)
    for x1, y1, x2, y2 in out.regions:
        inside[y1:y2, x1:x2] = True
        region_before = image[y1:y2, x1:x2].astype(int)
        region_after = out.image[y1:y2, x1:x2].astype(int)
        changed = np.abs(region_after - region_before).max(axis=2) > 0
        assert changed.mean() > 0.9, f"{name} left {1 - changed.mean():.0%} of a face unchanged"
        assert np.abs(region_after - region_before).mean() > 8
    assert np.array_equal(out.image[~inside], image[~inside])


def test_regions_cover_forehead_to_chin_and_ear_to_ear(photo_and_faces):
    image, faces = photo_and_faces
    regions = face_regions(faces, image.shape)
    for box, region in zip(faces.boxes, regions, strict=True):
        width, height = box[2] - box[0], box[3] - box[1]
        assert region[2] - region[0] >= 1.25 * width
        assert box[1] - region[1] >= 0.2 * height or region[1] == 0  # forehead
        assert region[3] - box[3] >= 0.1 * height or region[3] == image.shape[0]  # chin


def test_input_not_modified_in_place(photo_and_faces):
    image, faces = photo_and_faces
    before = image.copy()
    methods.create("mask")(image, faces)
    assert np.array_equal(image, before)


def test_no_faces_returns_identical_image():
    image = rgb("astronaut.png")
    out = methods.create("blur")(image, Faces.empty())
    assert np.array_equal(out.image, image) and out.regions.shape == (0, 4)


def test_registry_rejects_unknown_names_and_bad_options():
    assert {"blur", "pixelate", "mask"} <= set(methods.available())
    with pytest.raises(ValueError, match="unknown method"):
        methods.create("smudge")
    with pytest.raises(ValueError):
        methods.create("pixelate", blocks=1)
