"""Issue 12 part 5: ``linkage`` person (one surrogate per person, pseudonymous) or none (a fresh
surrogate per face), on real people (``../shared/data/lfw_dev``) and real models. Skipped with a
reason when ../shared is absent."""

from __future__ import annotations

import numpy as np
import pytest

from faceveil.anon_core import AnonConfig, FaceAnonymizer
from faceveil.anon_core.methods import create
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pseudonym import face_token
from tests.anon_core.lfw_world import lfw_world

pytestmark = [pytest.mark.shared, pytest.mark.slow]

KEY = b"linkage-test-key-0123456789abcdef"
OTHER = b"linkage-other-key-0123456789abcd"


class _Recording(Surrogate):
    """The surrogate method, noting the donor set of every face it renders."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chosen: list[tuple[int, ...]] = []

    def _mean_face(self, name: str, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.chosen.append(tuple(chosen.tolist()))
        return super()._mean_face(name, chosen)


def _run(linkage: str, key: bytes = KEY) -> dict[int, list[tuple]]:
    """Person -> per photo (donor set, pseudonym, encoded bytes) of its one surrogate face;
    photos whose face was not given a surrogate are left out."""
    world = lfw_world()
    method = _Recording(key, world.context, linkage=linkage)
    anonymizer = FaceAnonymizer(AnonConfig(method="surrogate", threads=1), world.detector, method)
    out: dict[int, list[tuple]] = {}
    for person, photos in world.photos.items():
        for photo in photos:
            method.chosen.clear()
            result = anonymizer(photo)
            assert result.ok
            if result.output.methods == ("surrogate",) and len(method.chosen) == 1:
                entry = (method.chosen[0], result.output.pseudonyms[0], result.encoded)
                out.setdefault(person, []).append(entry)
    return {p: runs for p, runs in out.items() if len(runs) == 2}


@pytest.fixture(scope="module")
def person_run() -> dict[int, list[tuple]]:
    return _run("person")


@pytest.fixture(scope="module")
def none_run() -> dict[int, list[tuple]]:
    return _run("none")


@pytest.fixture(scope="module")
def other_key_run() -> dict[int, list[tuple]]:
    return _run("none", OTHER)


def test_person_linkage_gives_both_photos_of_a_person_one_donor_set(person_run):
    assert len(person_run) >= 10
    same = [a[0] == b[0] and a[1] == b[1] for a, b in person_run.values()]
    assert np.mean(same) >= 0.8, same
    assert all(isinstance(a[1], str) and len(a[1]) == 16 for a, _ in person_run.values())


def _overlap(a: tuple, b: tuple) -> float:
    return len(set(a) & set(b)) / len(a)


def test_no_linkage_gives_each_photo_its_own_surrogate(none_run, other_key_run):
    """Two photos of one person get two keyed donor choices: different donor sets that share
    no more donors than two unrelated choices from the same candidates do (the same photo under
    another key), and no pseudonym that could group them."""
    assert len(none_run) >= 10
    assert np.mean([a[0] != b[0] for a, b in none_run.values()]) >= 0.9
    within = np.mean([_overlap(a[0], b[0]) for a, b in none_run.values()])
    chance = np.mean(
        [
            _overlap(a[0], b[0])
            for person in none_run.keys() & other_key_run.keys()
            for a, b in zip(none_run[person], other_key_run[person], strict=True)
        ]
    )
    assert within <= chance + 0.1, (within, chance)
    assert all(a[1] is None and b[1] is None for a, b in none_run.values())


def test_no_linkage_still_never_uses_the_person_as_donor(none_run):
    bank = lfw_world().context.bank
    for person, runs in none_run.items():
        for chosen, _, _ in runs:
            donors = {int(bank.ids[i][1:3]) for i in chosen}  # ids are "pNN_K#F"
            assert person not in donors
            assert len(set(bank.clusters[list(chosen)].tolist())) == len(chosen)


@pytest.mark.parametrize("linkage", ["person", "none"])
def test_each_linkage_is_byte_identical_on_a_rerun(linkage, person_run, none_run):
    first = person_run if linkage == "person" else none_run
    again = _run(linkage)
    assert again.keys() == first.keys()
    for person, runs in first.items():
        assert [r[2] for r in again[person]] == [r[2] for r in runs], person


def test_no_linkage_choice_follows_the_key(none_run, other_key_run):
    for person in none_run.keys() & other_key_run.keys():
        ours, theirs = none_run[person], other_key_run[person]
        assert [r[0] for r in ours] != [r[0] for r in theirs], person


def test_face_token_is_keyed_and_per_photo():
    photo, second = lfw_world().photos[0]
    box = np.array([60.0, 60.0, 190.0, 190.0])
    token = face_token(KEY, photo, box)
    assert token == face_token(KEY, photo.copy(), box) and len(token) == 16
    assert token != face_token(OTHER, photo, box)
    assert token != face_token(KEY, second, box)
    assert token != face_token(KEY, photo, box + 1.0)


def test_unknown_linkage_is_refused():
    with pytest.raises(ValueError, match="linkage must be one of"):
        create("surrogate", key=KEY, context=lfw_world().context, linkage="cluster")
