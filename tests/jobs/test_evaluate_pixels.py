"""The pixel inversion attacker of ``faceveil eval`` on real photos (the bundled demo images):
its U-Net learns to undo a fixed distortion on held-out patches, training is seeded, an
untrained U-Net is the identity, and a correction pasted back restores the face crop."""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.anon_core import demo_data
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.evaluate.config import PixelBudget
from faceveil.jobs.evaluate.pixels import (
    PixelInversion,
    UNet,
    crop_matrix,
    face_crop,
    paste_correction,
)

SMALL = PixelBudget(side=32, width=8, steps=160, batch=12, lr=3e-3)


def _photo(name: str) -> np.ndarray:
    return decode_image(demo_data.path(name).read_bytes()).rgb


@pytest.fixture(scope="module")
def patches() -> np.ndarray:
    """96 real 32 x 32 patches: 64 x 64 windows of the bundled photos, seeded, downscaled."""
    rng = np.random.default_rng(3)
    photos = [_photo(n) for n in ("obama.jpg", "obama2.jpg", "biden.jpg", "astronaut.png")]
    out = []
    for k in range(96):
        image = photos[k % len(photos)]
        y, x = (int(rng.integers(0, s - 64)) for s in image.shape[:2])
        out.append(image[y : y + 64 : 2, x : x + 64 : 2])
    return np.stack(out)


def _distort(x: np.ndarray) -> np.ndarray:
    """A fixed, invertible 'anonymizer': colour channels reversed and contrast halved."""
    return ((x[..., ::-1].astype(np.float32) - 128.0) * 0.5 + 128.0).astype(np.uint8)


def _l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_the_unet_learns_to_undo_a_distortion_on_held_out_patches(patches) -> None:
    train, test = patches[:64], patches[64:]
    inverse = PixelInversion(SMALL).fit(_distort(train), train)
    first, last = np.mean(inverse.losses[:10]), np.mean(inverse.losses[-10:])
    assert len(inverse.losses) == SMALL.steps
    assert last < 0.5 * first, (first, last)
    anonymized = _distort(test)
    restored = np.clip(anonymized + inverse.correction(anonymized), 0, 255)
    assert _l1(restored, test) < 0.5 * _l1(anonymized, test)
    assert 100_000 <= sum(p.numel() for p in UNet(PixelBudget().width).parameters()) <= 500_000


def test_training_is_deterministic_with_its_seed(patches) -> None:
    budget = PixelBudget(side=32, width=8, steps=8, batch=16)
    x, y = _distort(patches[:32]), patches[:32]
    one, two = PixelInversion(budget).fit(x, y), PixelInversion(budget).fit(x, y)
    assert one.losses == two.losses
    assert np.array_equal(one.correction(x), two.correction(x))
    other = PixelInversion(PixelBudget(side=32, width=8, steps=8, batch=16, seed=1)).fit(x, y)
    assert other.losses != one.losses


def test_an_untrained_unet_changes_nothing(patches) -> None:
    inverse = PixelInversion(PixelBudget(side=32, steps=0)).fit(patches[:4], patches[4:8])
    assert inverse.losses == []
    assert not inverse.correction(patches[:4]).any()


def test_a_pasted_correction_restores_the_face_crop_and_nothing_else() -> None:
    image = _photo("obama.jpg")
    faces = build_detector("centerface")([image])[0]
    assert len(faces) >= 1
    side = PixelBudget().side
    matrix = crop_matrix(faces.landmarks5[0], side)
    x0, y0, x1, y1 = (int(v) for v in faces.boxes[0][:4])
    anonymized = image.copy()
    anonymized[y0:y1, x0:x1] = 128  # the face box greyed out
    original_crop, anonymized_crop = (
        face_crop(image, matrix, side),
        face_crop(anonymized, matrix, side),
    )
    correction = original_crop.astype(np.float32) - anonymized_crop.astype(np.float32)
    restored = paste_correction(anonymized, correction, matrix)
    after = _l1(face_crop(restored, matrix, side), original_crop)
    assert after < 0.2 * _l1(anonymized_crop, original_crop)
    far = np.ones(image.shape[:2], bool)  # well outside the crop's footprint nothing moved
    h, w = y1 - y0, x1 - x0
    far[max(0, y0 - h) : y1 + h, max(0, x0 - w) : x1 + w] = False
    assert np.array_equal(restored[far], anonymized[far])
    with pytest.raises(ValueError, match="degenerate"):
        crop_matrix(np.zeros(10, np.float32), side)
