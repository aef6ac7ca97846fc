"""FaceAnonymizer on one image and on batches: results, metadata, fail-closed quarantine."""

import numpy as np
import pytest

from faceveil.anon_core import AnonConfig, FaceAnonymizer, Faces, SampleStatus, methods
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.stage import CpuStage
from faceveil.jobs.demo import jpeg_with_gps
from faceveil.manifests.canonical import canonical_json
from tests.factories import rgb


@pytest.fixture(scope="module")
def anonymizer():
    return FaceAnonymizer(AnonConfig(method="blur"))


def test_one_image_in_memory_no_ray_no_disk(anonymizer):
    result = anonymizer(jpeg_with_gps(rgb("obama.jpg")))
    assert result.status is SampleStatus.ANONYMIZED and result.ext == "jpg"
    meta = result.metadata()
    assert canonical_json(meta).count(b'"status":"anonymized"') == 1  # the same bytes as before
    assert meta["status"] == "anonymized" and len(meta["faces"]) == 1
    face = meta["faces"][0]
    assert set(face) == {"bbox", "score", "landmarks5", "method", "pseudonym"}
    assert face["method"] == "blur" and len(face["landmarks5"]) == 10
    out = decode_image(result.encoded).rgb
    assert out.shape == result.original.rgb.shape


def test_batch_keeps_order_and_quarantines_bad_inputs(anonymizer):
    good = jpeg_with_gps(rgb("biden.jpg"))
    results = anonymizer.batch([b"", good, b"not an image at all", rgb("astronaut.png")])
    assert [r.status for r in results] == ["quarantined", "anonymized", "quarantined", "anonymized"]
    assert results[0].stage == "decode" and "empty" in results[0].reason
    assert results[2].metadata() == {
        "status": "quarantined",
        "stage": "decode",
        "reason": results[2].reason,
    }


def test_no_face_image_passes_unchanged_in_pixels(anonymizer):
    flat = np.full((120, 160, 3), 90, np.uint8)
    result = anonymizer(flat)
    assert result.status == "no_face" and result.metadata()["faces"] == []
    assert np.array_equal(decode_image(result.encoded).rgb, flat)


def test_failing_method_quarantines_instead_of_passing_through():
    class Broken:
        name = "broken"
        needs_landmarks68 = needs_embeddings = False

        def __call__(self, image, faces):
            raise RuntimeError("boom")

    result = FaceAnonymizer(AnonConfig(), method=Broken())(rgb("astronaut.png"))
    assert result.status == "quarantined" and result.stage == "anonymize"
    assert result.encoded == b""


class _FixedFace:
    """A detector that finds one face in the top-left corner of every image and counts calls."""

    name = "fixed"

    def __init__(self):
        self.calls = []

    def __call__(self, images):
        self.calls.append(len(images))
        box = np.array([[2, 2, 20, 20, 0.9]], np.float32)
        return [Faces(box, np.zeros((1, 10), np.float32)) for _ in images]


class _FailsOnBlack:
    name = "picky"
    needs_landmarks68 = needs_embeddings = False

    def __call__(self, image, faces):
        if not image.any():
            raise RuntimeError("boom")
        return methods.create("mask")(image, faces)


def test_injected_stage_does_the_work_and_a_failing_image_is_quarantined_alone():
    detector = _FixedFace()
    stage = CpuStage(AnonConfig(), detector=detector, method=_FailsOnBlack())
    anonymizer = FaceAnonymizer(AnonConfig(), stage=stage)
    assert anonymizer.detector is detector and anonymizer.method is stage.method
    white, black = np.full((32, 32, 3), 255, np.uint8), np.zeros((32, 32, 3), np.uint8)
    results = anonymizer.batch([white, black, b"", white])
    assert [(r.status, r.stage, r.reason) for r in results[1:3]] == [
        ("quarantined", "anonymize", "picky failed (RuntimeError)"),
        ("quarantined", "decode", results[2].reason),
    ]
    assert results[0].status == results[3].status == "anonymized"
    assert (results[0].output.image[2:20, 2:20] == 96).all()
    assert detector.calls == [3, 1, 1, 1]  # the failing group, then image by image
    assert [len(w) for w in anonymizer.map([[white], [], [black, white]])] == [1, 0, 2]


def test_same_input_same_bytes(anonymizer):
    data = jpeg_with_gps(rgb("two_people.jpg"))
    assert anonymizer(data).encoded == anonymizer(data).encoded
