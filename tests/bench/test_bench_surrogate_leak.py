"""bench/bench_surrogate_leak.py: the eye-opening measure on known points, and a tiny run on real
lfw_dev and utkface_dev faces whose every column is in range."""

from __future__ import annotations

import csv
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.bench_surrogate_leak import _arguments, _chosen, eye_opening, mouth_opening
from tests.factories import shared_path

REPO = Path(__file__).resolve().parents[2]
MFN, DLIB = "mobilefacenet_128d.onnx", "dlib_resnet"


def _eye(left: float, gaps: tuple[float, float]) -> list[tuple[float, float]]:
    """Six eye points 10 px wide from x = ``left``: corner, upper lid x2, corner, lower lid x2."""
    (g1, g2), x = gaps, left
    upper = [(x + 3, -g1 / 2), (x + 7, -g2 / 2)]
    lower = [(x + 7, g2 / 2), (x + 3, g1 / 2)]
    return [(x, 0), *upper, (x + 10, 0), *lower]


def test_eye_opening_is_the_mean_eye_aspect_ratio() -> None:
    points = np.zeros((68, 2))
    points[36:42] = _eye(0, (2, 4))  # (2 + 4) / (2 * 10) = 0.3
    points[42:48] = _eye(20, (1, 1))  # (1 + 1) / 20 = 0.1
    assert eye_opening(points) == pytest.approx(0.2)
    points[42:48] = _eye(20, (0, 0))  # one eye shut
    assert eye_opening(points) == pytest.approx(0.15)
    assert mouth_opening(points) == 0.0  # the mouth's points are untouched: no gap, no width


def test_all_identities_means_every_person_with_two_photos_or_more() -> None:
    args = _arguments(["--identities", "all", "--first-pass", "all"])
    assert args.identities is None and args.first_pass is None
    assert _arguments(["--identities", "30"]).identities == 30
    with pytest.raises(SystemExit):
        _arguments(["--identities", "0"])
    rows = [("a1", "A"), ("b1", "B"), ("c2", "C"), ("a2", "A"), ("c1", "C"), ("c3", "C")]
    assert _chosen(rows, None) == [("a1", "A"), ("a2", "A"), ("c1", "C"), ("c2", "C"), ("c3", "C")]
    one = _chosen(rows, 1)
    assert len({who for _, who in one}) == 1 and set(one) <= set(_chosen(rows, None))


def _labels_subset(tmp_path: Path) -> tuple[Path, int]:
    """Every fourth utkface_dev face (absolute paths) and how many of them are adults."""
    utk = shared_path("data", "utkface_dev", "labels.csv").parent
    with open(utk / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[::4]
    out = tmp_path / "labels.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(utk / r["path"])} for r in rows)
    return out, sum(float(r["age"]) >= 18 for r in rows)


@pytest.mark.slow
@pytest.mark.shared
def test_tiny_run_fills_every_column_in_range(tmp_path: Path) -> None:
    shared_path("models", MFN)
    shared_path("data", "lfw_dev", "manifest.csv")
    labels, adults = _labels_subset(tmp_path)
    out = tmp_path / "figures.json"
    command = [
        sys.executable, "-m", "bench.bench_surrogate_leak", "--identities", "4",
        "--first-pass", "80", "--variants", "floor,default", "--labels", str(labels),
        "--json", str(out),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    child_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = json.loads(out.read_text())
    setup, floor, default = report["setup"], report["rows"]["floor"], report["rows"]["default"]

    # The judges: fitted on the adults of the labels given (a few may have no face found), and
    # their own held-out quality is that of a real, imperfect judge.
    for name in (MFN, DLIB):
        judge = setup["judges"][name]
        assert 0.9 * adults <= judge["n_used"] <= adults
        assert 0.6 <= judge["gender_cv_accuracy"] <= 1.0
        assert 2.0 <= judge["age_cv_mae_years"] <= 20.0
    assert setup["identities"] == 4 and floor["faces"] == default["faces"] == setup["probes"]

    # The floor (a mild blur and JPEG of the original) keeps the identity and everything else.
    for name in (MFN, DLIB):
        assert floor["rank1"][name] >= 0.9 and floor["tar_at_far"][name] >= 0.8
        assert floor["age_error_years"][name] < 4.0  # far below the judges' own error
    assert floor["eye_change"] < 0.05 and floor["mouth_change"] < 0.045
    assert floor["pose_change_deg"] < 2.5 and floor["redetected"] >= 0.9
    assert floor["masked"] == 0.0 and floor["images_per_cpu_s"] is None

    # The surrogate: a verifier at FAR 1e-3 accepts far fewer of its faces than of the floor's.
    assert default["tar_at_far_worst"] == max(default["tar_at_far"].values())
    assert default["tar_at_far_worst"] < 0.5 < floor["tar_at_far_worst"]
    assert 0.0 <= default["eye_change"] < 0.2
    for name in (MFN, DLIB):
        assert 0.0 <= default["age_error_years"][name] <= 40.0
    # Images per CPU-second: the job's CPU per image (first pass + second pass) cannot exceed
    # the whole benchmark process's CPU spread over the fewer of the two passes' images.
    assert default["anonymized_images"] == setup["probes"]
    fewer = min(setup["first_pass_images"], default["anonymized_images"])
    assert fewer / child_cpu <= default["images_per_cpu_s"] <= 50.0
    for column in ("TAR@FAR1e-3 worst", "eye change", "age error y, dlib judge"):
        assert column in proc.stdout
