"""bench/bench_line_up.py on the small LFW world: both means are measured, the plain one is
really the average without lining up, and the lined-up one keeps more edges."""

from __future__ import annotations

import pytest

from bench.bench_line_up import measure, worst_vs_originals
from faceveil.anon_core.surrogate import donors
from tests.anon_core.lfw_world import lfw_world

pytestmark = pytest.mark.shared


def test_the_bench_compares_the_plain_and_the_lined_up_mean():
    bank = lfw_world().context.bank
    before = donors.line_up
    result = measure(bank, sets=4, k=6)
    assert donors.line_up is before  # the plain mean's stand-in is put back
    plain, lined = result["plain"], result["lined up"]
    assert 0.5 < plain["edge_retention_mean"] < lined["edge_retention_mean"] < 1.2
    assert result["gain_share"] == 1.0
    assert plain["ms_per_mean"] > 0 and lined["ms_per_mean"] > plain["ms_per_mean"]


def test_the_worst_case_per_split_leaves_out_only_the_anonymized_gallery():
    figures = {
        "aligned / a": [0.02, 0.02, 0.02],
        "parrot_gallery_anonymized / a": [0.90, 0.80, 0.85],
        "parrot_gallery_original / a": [0.05, 0.09, 0.04],
        "inversion / b": [0.07, 0.06, 0.01],
    }
    assert worst_vs_originals(figures) == [0.07, 0.09, 0.04]
