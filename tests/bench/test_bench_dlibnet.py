"""bench_dlibnet on a few real lfw_dev photos: both ways time every face and agree."""

from __future__ import annotations

from bench.bench_dlibnet import main, measure
from tests.factories import shared_path


def test_both_kernels_are_timed_on_the_same_faces_and_agree(capsys) -> None:
    data = shared_path("data", "lfw_dev", "manifest.csv").parent
    r = measure(data, 4)
    assert r["faces"] >= 4
    assert r["seconds"]["dlib"] > 0 and r["seconds"]["onnxruntime"] > 0
    assert r["max_abs"] < 1e-5 and r["min_cosine"] > 0.99999
    assert main(["--data", str(data), "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "dlib / onnxruntime:" in out and "ms CPU per face" in out
