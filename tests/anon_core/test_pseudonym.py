"""Identity clustering and keyed pseudonyms: determinism, order independence, key separation."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faceveil.anon_core import pseudonym as ps
from faceveil.anon_core.pseudonym import (
    check_key,
    cluster_identities,
    keyed_order,
    pseudonym,
    unclustered_id,
)

KEY = b"k" * 32


def _people(n_people: int, per_person: int, seed: int = 0, spread: float = 0.03):
    """Unit embeddings of ``n_people`` well-separated people, ``per_person`` photos each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_people, 128))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = np.repeat(centres, per_person, axis=0) + spread * rng.standard_normal(
        (n_people * per_person, 128)
    ) / np.sqrt(128)
    ids = [f"s{p:03d}-{i}#0" for p in range(n_people) for i in range(per_person)]
    return ids, emb.astype(np.float32), np.repeat(np.arange(n_people), per_person)


def test_pseudonym_is_truncated_hmac_and_depends_on_key_and_cluster():
    expected = hmac.new(KEY, b"faceveil/pseudonym/v1\x00c1", hashlib.sha256).hexdigest()[:16]
    assert pseudonym(KEY, "c1") == expected
    assert pseudonym(KEY, "c1") != pseudonym(KEY, "c2")
    assert pseudonym(KEY, "c1") != pseudonym(b"j" * 32, "c1")
    assert len(pseudonym(KEY, "c1", length=32)) == 32


def test_short_or_wrong_keys_are_refused_without_showing_them():
    with pytest.raises(ValueError) as info:
        check_key(b"tiny")
    assert "tiny" not in str(info.value)
    with pytest.raises(TypeError):
        check_key("a" * 32)


def test_keyed_order_is_a_stable_permutation_that_the_key_changes():
    ids = [f"donor{i}" for i in range(30)]
    order = keyed_order(KEY, "seed", ids)
    assert sorted(order.tolist()) == list(range(30))
    assert np.array_equal(order, keyed_order(KEY, "seed", ids))
    assert not np.array_equal(order, keyed_order(b"j" * 32, "seed", ids))
    assert not np.array_equal(order, keyed_order(KEY, "other", ids))
    # An id's rank depends on the id only, not on which others are listed.
    subset = ids[::2]
    sub_order = [subset[i] for i in keyed_order(KEY, "seed", subset)]
    full_order = [ids[i] for i in order if ids[i] in subset]
    assert sub_order == full_order


def test_clusters_recover_people_and_are_named_by_smallest_member():
    ids, emb, truth = _people(6, 5)
    clusters, labels = cluster_identities(ids, emb, threshold=0.1)
    assert len(clusters) == 6
    for person in range(6):
        members = [i for i, t in zip(ids, truth, strict=True) if t == person]
        label = {int(labels[ids.index(m)]) for m in members}
        assert len(label) == 1
        assert clusters.cluster_ids[label.pop()] == min(members)
    assert list(clusters.cluster_ids) == sorted(clusters.cluster_ids)
    assert clusters.sizes.tolist() == [5] * 6
    np.testing.assert_allclose(np.linalg.norm(clusters.centroids, axis=1), 1.0, rtol=1e-5)


def test_assign_is_nearest_centroid_within_threshold():
    ids, emb, truth = _people(4, 3, seed=1)
    clusters, labels = cluster_identities(ids, emb, threshold=0.1)
    assert np.array_equal(clusters.assign(emb), labels)
    stranger = np.random.default_rng(9).standard_normal((1, 128)).astype(np.float32)
    assert clusters.assign(stranger).tolist() == [-1]
    assert clusters.assign(np.zeros((0, 128), np.float32)).shape == (0,)


def test_attributes_are_summarised_per_cluster_by_median():
    ids, emb, truth = _people(3, 4, seed=2)
    attrs = np.stack([truth * 10.0, np.ones(len(ids)), np.zeros(len(ids))], axis=1)
    attrs[0] = np.nan
    clusters, labels = cluster_identities(ids, emb, 0.1, attrs.astype(np.float32))
    for c in range(3):
        person = truth[labels == c][0]
        np.testing.assert_allclose(clusters.attributes[c], [person * 10.0, 1.0, 0.0])


def test_micro_cluster_path_agrees_on_separated_people(monkeypatch):
    ids, emb, _ = _people(8, 6, seed=3)
    exact, exact_labels = cluster_identities(ids, emb, threshold=0.1)
    monkeypatch.setattr(ps, "MAX_EXACT", 10)
    approx, approx_labels = cluster_identities(ids, emb, threshold=0.1)
    assert exact.cluster_ids == approx.cluster_ids
    assert np.array_equal(exact_labels, approx_labels)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unique"):
        cluster_identities(["a", "a"], np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="ids but"):
        cluster_identities(["a"], np.ones((2, 4), np.float32))
    clusters, labels = cluster_identities([], np.zeros((0, 4), np.float32))
    assert len(clusters) == 0 and labels.shape == (0,)
    assert "clusters" in repr(clusters)


def test_unclustered_id_is_stable_and_hides_the_embedding():
    e = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    assert unclustered_id(e) == unclustered_id(e.copy())
    assert unclustered_id(e) != unclustered_id(-e)
    assert str(round(float(e[0]), 3)) not in unclustered_id(e)


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(2, 5), st.integers(1, 4))
def test_clustering_does_not_depend_on_input_order(rand, people, photos):
    ids, emb, _ = _people(people, photos, seed=rand.randint(0, 1000), spread=0.2)
    perm = list(range(len(ids)))
    rand.shuffle(perm)
    a, la = cluster_identities(ids, emb, threshold=0.08)
    b, lb = cluster_identities([ids[i] for i in perm], emb[perm], threshold=0.08)
    assert a.cluster_ids == b.cluster_ids
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-6)
    assert np.array_equal(la[perm], lb)
