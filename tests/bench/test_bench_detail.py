"""bench_detail: its octave measure scores a photo against itself 1 and a blurred copy less in
every octave, and the bench runs on a bundled photo with a real donor bank."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.bench_detail import cheeks, main, octave_spreads
from tests.factories import shared_path

pytestmark = pytest.mark.shared


def test_a_photo_scores_one_against_itself_and_a_blurred_copy_less():
    photo = cv2.imread(str(shared_path("data", "fixtures", "obama3.jpg")))[262:334, 716:860]
    mask = np.zeros(photo.shape[:2], bool)
    mask[16:-16, 16:-16] = True
    own = octave_spreads(photo, mask)
    assert np.all(own > 0) and np.array_equal(own, octave_spreads(photo.copy(), mask))
    soft = octave_spreads(cv2.GaussianBlur(photo, (0, 0), 1.5), mask)
    assert np.all(soft < own), (soft, own)


def test_cheeks_lie_between_the_jaw_and_the_nose():
    points = np.zeros((68, 2))
    points[:17] = np.stack(
        [np.linspace(0, 160, 17), 100 + 60 * np.sin(np.linspace(0, np.pi, 17))], 1
    )
    points[27:36] = [[80, 40 + 8 * i] for i in range(9)]
    points[36:48] = [[40 + 3 * i, 60] for i in range(6)] + [[100 + 3 * i, 60] for i in range(6)]
    points[48:68] = [[60 + 2 * i, 140] for i in range(20)]
    mask = cheeks((200, 200), points)
    assert mask[110, 30] and mask[110, 130]  # left and right cheek
    assert not mask[110, 80] and not mask[10, 80]  # the nose's line and above the eyes


@pytest.mark.slow
def test_the_bench_runs_on_a_bundled_photo(capsys):
    data = shared_path("data", "lfw_dev", "manifest.csv").parent
    args = ["--data", str(data), "--photos", "obama3.jpg", "--face-heights", "500"]
    assert main([*args, "--donor-images", "150"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("obama3.jpg"))
    ratios = [float(cell) for cell in row.split()[3:]]
    assert len(ratios) == 5 and all(r > 0.75 for r in ratios[:3]), row
