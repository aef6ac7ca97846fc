"""Attribute probes fitted at run time, and the donor choice they constrain."""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.anon_core.surrogate.attributes import (
    AGE_TOLERANCE,
    BINARY,
    GENDER_TOLERANCE,
    VALUE,
    LinearAttribute,
    fit_binary,
    fit_probes,
    fit_value,
)


def _labelled(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16))
    direction = rng.standard_normal(16)
    labels = (x @ direction + 0.3 * rng.standard_normal(n) > 0).astype(int)
    return x.astype(np.float32), labels, direction


def test_binary_probe_learns_a_linear_rule_deterministically():
    x, y, _ = _labelled()
    probe = fit_binary("gender", x, y, "dlib_resnet")
    again = fit_binary("gender", x, y, "dlib_resnet")
    assert probe.kind == BINARY and np.array_equal(probe.weights, again.weights)
    assert np.mean((probe(x) >= 0.5) == (y == 1)) > 0.9
    assert probe.weights.shape == (16,)


def test_binary_compatibility_needs_the_same_confident_side():
    probe = LinearAttribute("g", BINARY, np.zeros(2), 0.0, "e", tolerance=0.25)
    donors = np.array([0.1, 0.3, 0.6, 0.8, 0.95])
    assert probe.compatible(0.9, donors).tolist() == [False, False, False, True, True]
    assert probe.compatible(0.2, donors).tolist() == [True, False, False, False, False]


def test_value_probe_and_tolerance():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8))
    age = x @ np.arange(1, 9) + 40
    probe = fit_value("age", x, age, "dlib_resnet", tolerance=5.0)
    assert probe.kind == VALUE
    assert np.abs(probe(x) - age).mean() < 1.0
    assert probe.compatible(40.0, np.array([34.0, 36.0, 44.0, 46.0])).tolist() == [
        False,
        True,
        True,
        False,
    ]


def test_bad_labels_are_refused():
    x, _, _ = _labelled(10)
    with pytest.raises(ValueError, match="0/1"):
        fit_binary("g", x, np.full(10, 2), "e")
    with pytest.raises(ValueError, match="both"):
        fit_binary("g", x, np.zeros(10), "e")
    with pytest.raises(ValueError, match="one value"):
        fit_value("a", x, np.zeros(3), "e", 5.0)


def test_fit_probes_gives_gender_and_optionally_age():
    x, y, _ = _labelled()
    age = 30.0 + 10.0 * x[:, 0]
    gender, years = fit_probes(x, y, age, "dlib_resnet")
    assert (gender.name, gender.kind, years.name, years.kind) == ("gender", BINARY, "age", VALUE)
    assert gender.tolerance == GENDER_TOLERANCE and years.tolerance == AGE_TOLERANCE
    assert gender.embedder == years.embedder == "dlib_resnet"
    assert np.abs(years(x) - age).mean() < 1.0
    assert [p.name for p in fit_probes(x, y, None, "dlib_resnet")] == ["gender"]
