"""Unit tests of the evaluation's metrics, method specs and method hooks (no shared data)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from faceveil.anon_core import methods
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.landmarks import landmark_error
from faceveil.jobs.evaluate.config import MethodSpec, parse_method_spec, parse_methods
from faceveil.jobs.evaluate.methods import (
    IdentityMethod,
    MethodContext,
    MethodUnavailable,
    build_method,
    eval_method_names,
)
from faceveil.jobs.evaluate.metrics import (
    central_face,
    outside_mask,
    rank1,
    ssim_map,
    ssim_outside,
    tar_at_far,
    threshold_at_far,
    verification_scores,
)
from faceveil.jobs.residual import ResidualConfig, covered


def _context() -> MethodContext:
    return MethodContext(lambda: iter(()), b"k" * 32, None)


def test_method_specs_parse_options() -> None:
    assert parse_method_spec("blur") == MethodSpec("blur")
    spec = parse_method_spec("pixelate:blocks=6:grow=0.4:color=[1,2,3]:name=x")
    assert spec.options == {"blocks": 6, "grow": 0.4, "color": [1, 2, 3], "name": "x"}
    assert spec.label == "pixelate:blocks=6:color=[1, 2, 3]:grow=0.4:name=x"
    assert [s.label for s in parse_methods("blur, mask")] == ["blur", "mask"]
    for bad in ("", "blur:strength", ":x=1", "blur,blur"):
        with pytest.raises(ValueError):
            parse_methods(bad)


def test_rank1_counts_nearest_gallery_identity() -> None:
    gallery = np.eye(3, dtype=np.float32)
    probes = np.array([[0.9, 0.1, 0], [0, 0.2, 0.8], [0.7, 0.6, 0]], np.float32)
    assert rank1(gallery, np.array([0, 1, 2]), probes, np.array([0, 2, 1])) == (2, 3)
    assert rank1(gallery, np.array([0, 1, 2]), probes[:0], np.array([], int)) == (0, 0)


def test_threshold_and_tar_at_far() -> None:
    impostor = np.arange(1000, dtype=np.float64) / 1000  # 0.000 .. 0.999
    t = threshold_at_far(impostor, 0.01)
    assert np.sum(impostor > t) == 10
    tar, thr = tar_at_far(np.array([0.5, 0.995, 1.0, 0.2]), impostor, 0.01)
    assert thr == t and tar == 0.5
    assert threshold_at_far(impostor, 0.0) == 0.999  # nothing accepted above the top impostor
    assert threshold_at_far(np.array([]), 0.01) == float("inf")


def test_verification_pairs_skip_same_image() -> None:
    a = np.eye(4, dtype=np.float32)
    ids = np.array([0, 0, 1, 1])
    genuine, impostor = verification_scores(a, a, ids)
    assert len(genuine) == 4 and len(impostor) == 8  # ordered: original i, anonymized j
    assert np.all(genuine == 0)  # the diagonal (same photo, score 1) is not a genuine pair


def test_verification_pairs_when_only_some_images_are_anonymized() -> None:
    # Five originals of people 0, 0, 0, 1, 1; only images 1 and 4 were anonymized.
    originals = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
    anonymized = np.array([[10, 20, 30, 40, 50], [1, 1, 1, 1, 1]], np.float64)
    ids = np.array([0, 0, 0, 1, 1])
    genuine, impostor = verification_scores(originals, anonymized, ids, columns=[1, 4])
    # Image 1's genuine pairs are originals 0 and 2 (not itself); image 4's is original 3.
    assert sorted(genuine) == [4.0, 10.0, 90.0]
    # Image 1 against originals 3 and 4, image 4 against originals 0, 1 and 2.
    assert sorted(impostor) == [1.0, 2.0, 3.0, 160.0, 250.0]


def test_ssim_matches_scikit_image_outside_regions() -> None:
    from skimage import metrics

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    luma = lambda x: x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    _, ref = metrics.structural_similarity(
        luma(a), luma(b), data_range=255, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, full=True,
    )  # fmt: skip
    ours = ssim_map(a, b)
    regions = np.array([[30, 20, 60, 50]])
    mask = outside_mask(a.shape, regions)
    assert not mask[20:50, 30:60].any() and mask.sum() > 0
    assert abs(ours[mask].mean() - ref[mask].mean()) < 1e-3
    assert ssim_outside(a, a, regions) == pytest.approx(1.0)
    c = a.copy()
    c[20:50, 30:60] = 0  # changes inside the region do not count
    assert ssim_outside(a, c, regions) == pytest.approx(1.0)


def test_central_face_and_landmark_error() -> None:
    boxes = np.array([[0, 0, 40, 40, 0.99], [30, 30, 80, 80, 0.6], [35, 35, 70, 70, 0.9]])
    faces = Faces(boxes.astype(np.float32), np.zeros((3, 10), np.float32))
    assert central_face(faces, (100, 100, 3)) == 2
    assert central_face(faces.select(np.array([0])), (100, 100, 3)) is None
    shape = np.zeros((68, 2))
    shape[36:42] = [10, 50]
    shape[42:48] = [30, 50]
    assert landmark_error(shape, shape + [2, 0]) == pytest.approx(0.1)


def test_identity_is_eval_only_and_changes_nothing() -> None:
    assert "identity" not in methods.available()
    assert "identity" in eval_method_names()
    image = np.full((50, 60, 3), 7, np.uint8)
    faces = Faces(np.array([[10, 10, 30, 30, 0.9]], np.float32), np.zeros((1, 10), np.float32))
    out = build_method(MethodSpec("identity"), _context())(image, faces)
    assert isinstance(out.image, np.ndarray) and np.array_equal(out.image, image)
    assert out.methods == ("identity",) and out.regions.shape == (1, 4)
    assert IdentityMethod.name == "identity"


def test_unknown_and_unimportable_methods_are_unavailable(monkeypatch) -> None:
    with pytest.raises(MethodUnavailable, match="no method"):
        build_method(MethodSpec("nonexistent"), _context())
    monkeypatch.setitem(sys.modules, "faceveil.anon_core.surrogate.context", None)
    with pytest.raises(MethodUnavailable, match="surrogate"):
        build_method(MethodSpec("surrogate"), _context())
    assert build_method(MethodSpec("blur", {"strength": 0.2}), _context()).strength == 0.2


def test_residual_coverage_criterion() -> None:
    config = ResidualConfig(out="unused")
    recorded = np.array([[100, 100, 160, 180]], np.float64)
    shape = (400, 400, 3)
    assert covered(np.array([102, 98, 158, 182]), recorded, shape, config)  # same face
    assert covered(np.array([95, 60, 165, 150]), recorded, shape, config)  # inside the region
    assert not covered(np.array([250, 100, 310, 180]), recorded, shape, config)  # another face
    assert not covered(np.array([100, 100, 160, 180]), recorded[:0], shape, config)
