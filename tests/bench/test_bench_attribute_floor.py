"""bench_attribute_floor: its attacker names a person exactly when the attributes single them
out, falls to chance when they say nothing, and the bench runs on real lfw_dev photos."""

from __future__ import annotations

import numpy as np

from bench.bench_attribute_floor import main, rank1
from tests.factories import shared_path

IDS = np.repeat(np.arange(40), 3)  # 40 people, 3 photos each


def test_attributes_that_single_a_person_out_name_them_and_constant_ones_do_not():
    correct, probes, gallery = rank1(IDS, IDS[:, None].astype(np.float32), seed=0)
    assert gallery == 20 and probes == 40 and correct == probes
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(len(IDS), 3)).astype(np.float32)
    correct, probes, _ = rank1(IDS, noise, seed=0)
    assert correct <= 8  # chance is 2 of 40; pure noise should not come near naming them


def test_the_bench_prints_every_attribute_set_on_lfw_dev(capsys):
    data = shared_path("data", "lfw_dev", "manifest.csv").parent
    assert main(["--data", str(data), "--splits", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("gender ", "gender, age ", "gender, age, skin tone"):
        assert f"\n{name}" in out, out
    assert "239 people" in out and "/403)" in out  # split 0 holds 403 probes, as in eval
