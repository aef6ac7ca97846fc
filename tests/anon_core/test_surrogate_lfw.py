"""Surrogate identities on real people: LFW photos (``../shared/data/lfw_dev``), real models.

One person keeps one pseudonym and one donor set across photos; donors are never the person
themself; another key gives unrelated pseudonyms and donors. Skipped when the data is absent.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.surrogate import collect_faces, context_from_table
from faceveil.anon_core.surrogate import geometry as geo
from faceveil.anon_core.surrogate.donors import skin_tone
from tests.factories import shared_path

pytestmark = [pytest.mark.shared, pytest.mark.slow]

PEOPLE = 30
PHOTOS = 4


def _data_root() -> Path:
    return shared_path("data", "lfw_dev", "manifest.csv").parent


@pytest.fixture(scope="module")
def lfw():
    """(path -> identity, path -> RGB) for PHOTOS photos each of the first PEOPLE people."""
    root = _data_root()
    by_person = defaultdict(list)
    with open(root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_person[row["identity"]].append(row["path"])
    chosen = [p for p in sorted(by_person) if len(by_person[p]) >= PHOTOS][:PEOPLE]
    who = {path: person for person in chosen for path in by_person[person][:PHOTOS]}
    images = {
        path: cv2.cvtColor(cv2.imread(str(root / path)), cv2.COLOR_BGR2RGB) for path in sorted(who)
    }
    return who, images


@pytest.fixture(scope="module")
def first_pass(lfw):
    who, images = lfw
    models = (build_detector("centerface", threads=1), Dlib68(), DlibEmbedder())
    table = collect_faces(list(images.items()), *models)
    return table, context_from_table(table)


@pytest.fixture(scope="module")
def faces(first_pass):
    """path -> embedding of its face (photos with one reliable face only)."""
    table, _ = first_pass
    out = {}
    for face_id, emb in zip(table.ids, table.embeddings, strict=True):
        path, number = face_id.rsplit("#", 1)
        out.setdefault(path, {})[number] = emb
    return {path: e["0"] for path, e in out.items() if len(e) == 1 and "0" in e}


def test_clusters_follow_people(lfw, faces, first_pass):
    who, _ = lfw
    _, context = first_pass
    paths = sorted(faces)
    labels = context.clusters.assign(np.stack([faces[p] for p in paths]))
    same_person = np.array([[who[a] == who[b] for b in paths] for a in paths])
    same_cluster = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same_person), 1)
    precision = (same_person & same_cluster & upper).sum() / (same_cluster & upper).sum()
    recall = (same_person & same_cluster & upper).sum() / (same_person & upper).sum()
    assert precision >= 0.85 and recall >= 0.85, (precision, recall)


def test_one_person_one_pseudonym_and_donor_set(lfw, faces, first_pass):
    who, _ = lfw
    _, context = first_pass
    method = Surrogate(b"team-key-0123456789abcdef-012345", context)
    by_person = defaultdict(set)
    by_name = defaultdict(set)
    for path, emb in faces.items():
        name, donors = method.donor_set(emb, np.full(3, np.nan))
        by_person[who[path]].add(name)
        by_name[name].add(tuple(donors.tolist()))
    whole = np.mean([len(names) == 1 for names in by_person.values()])
    assert whole >= 0.85, f"only {whole:.0%} of people keep a single pseudonym"
    assert all(len(sets) == 1 for sets in by_name.values())


def test_donors_are_never_the_person(lfw, faces, first_pass):
    who, _ = lfw
    _, context = first_pass
    method = Surrogate(b"team-key-0123456789abcdef-012345", context)
    for path, emb in faces.items():
        _, donors = method.donor_set(emb, np.full(3, np.nan))
        donor_people = {who[context.bank.ids[i].rsplit("#", 1)[0]] for i in donors}
        assert who[path] not in donor_people, path
        assert len(donors) == 6 and len(set(context.bank.clusters[donors].tolist())) == 6


def test_other_key_gives_unrelated_pseudonyms_and_donors(faces, first_pass):
    _, context = first_pass
    a = Surrogate(b"team-key-0123456789abcdef-012345", context)
    b = Surrogate(b"other-key-0123456789abcdef-01234", context)
    names_a, names_b, overlap = set(), set(), []
    for emb in faces.values():
        name_a, donors_a = a.donor_set(emb, np.full(3, np.nan))
        name_b, donors_b = b.donor_set(emb, np.full(3, np.nan))
        names_a.add(name_a)
        names_b.add(name_b)
        overlap.append(len(set(donors_a.tolist()) & set(donors_b.tolist())) / len(donors_a))
    assert not names_a & names_b
    assert np.mean(overlap) < 0.6


# ---- no donor's pixels in a surrogate face, after warping -------------------------------------

KEY = b"team-key-0123456789abcdef-012345"


def _detail(rgb: np.ndarray) -> np.ndarray:
    """Band-pass of the grey image: the fine structure that tells one face from another."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.GaussianBlur(grey, (0, 0), 1.0) - cv2.GaussianBlur(grey, (0, 0), 4.0)


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def _donor_likeness(method: Surrogate, result) -> list[np.ndarray]:
    """Per surrogate face of the written image: its correlation with every donor of the bank.

    The face is warped back from where it was drawn into the bank's texture frame (the inverse
    of the method's warp), and compared inside the inner face with each donor texture, both
    minus the bank's average face, so what is compared is what tells people apart."""
    bank = method.context.bank
    written = decode_image(result.encoded).rgb
    details = np.stack([_detail(t) for t in bank.textures])
    average = details.mean(axis=0)
    inner = np.zeros((bank.size, bank.size), np.uint8)
    cv2.fillConvexPoly(inner, cv2.convexHull(bank.shape[17:]).astype(np.int32), 1)
    out = []
    for i in np.flatnonzero(np.array(result.output.methods) == "surrogate"):
        points = result.faces.landmarks68[i].astype(np.float64)
        embedding = np.asarray(result.faces.embeddings[i], np.float32)
        _, chosen = method.donor_set(embedding, skin_tone(result.original.rgb, points))
        drawn = method.synthesizer.target_shape(points, bank.shapes[chosen].mean(axis=0))
        back, covered = geo.warp_triangles(
            written, (geo.extend_landmarks(drawn), bank.outline), bank.triangles,
            (0, 0, bank.size, bank.size),
        )  # fmt: skip
        face = _detail(back) - average
        mask = covered & inner.astype(bool)
        out.append(np.array([_correlation(face, d - average, mask) for d in details]))
    return out


def test_no_donor_shows_through_a_written_surrogate(lfw, first_pass):
    """The written bytes of surrogate faces (what a job puts in ``data/``) are scanned for donor
    pixels after the warp: for each face, the donor it resembles most is pasted on purpose (the
    same method with its donor set forced to that one donor), and the real face must resemble
    that donor far less than the pasted one does. A method that pasted one donor, or averaged
    too few, would fail here; a byte search for donor pixels could not."""
    _, images = lfw
    _, context = first_pass
    detector = build_detector("centerface", threads=1)
    method = Surrogate(KEY, context)
    gaps = []
    for image in [images[p] for p in sorted(images)[::10]]:
        result = FaceAnonymizer(AnonConfig(threads=1), detector, method)(image)
        for likeness in _donor_likeness(method, result):
            nearest = int(np.argmax(likeness))
            pasted = Surrogate(KEY, context)
            pick = pasted.donor_set
            pasted.donor_set = lambda e, s, t=None, *, pick=pick, j=nearest: (
                pick(e, s, t)[0],
                np.full(6, j),
            )
            leak = FaceAnonymizer(AnonConfig(threads=1), detector, pasted)(image)
            control = _donor_likeness(pasted, leak)[0][nearest]
            assert control > 0.5, "the scan does not find a pasted donor"
            gaps.append(control - likeness[nearest])
    assert len(gaps) >= 8
    # Measured on these 13 faces at --privacy 0.6: smallest gap 0.145 (0.154 at 0.5:
    # more of the donors' shape lines the face up with them a little better). The same faces
    # drawn from a mean of only two donors: smallest gap -0.04; one donor pasted: 0.
    assert min(gaps) > 0.1, sorted(gaps)[:5]


def test_donors_with_glasses_are_taken_only_where_too_few_others_qualify(faces, first_pass):
    """Donors found wearing glasses (``DonorBank.glasses``) are avoided where enough others
    qualify, and taken where not: with every donor marked, each face gets the donors it gets
    when none is marked; with the bank's own marks, no face gets two marked donors (two
    wearers leave faint frames on the mean face) and fewer are taken in all."""
    from dataclasses import replace

    _, context = first_pass
    bank = context.bank
    assert 0 < bank.glasses.sum() < len(bank)

    def donor_sets(glasses) -> list[np.ndarray]:
        method = Surrogate(KEY, replace(context, bank=replace(bank, glasses=glasses)))
        return [method.donor_set(emb, np.full(3, np.nan))[1] for emb in faces.values()]

    unmarked = donor_sets(None)
    everyone = donor_sets(np.ones(len(bank), bool))
    assert all(np.array_equal(a, b) for a, b in zip(unmarked, everyone, strict=True))
    marked = [int(bank.glasses[d].sum()) for d in donor_sets(bank.glasses)]
    ignored = [int(bank.glasses[d].sum()) for d in unmarked]
    assert max(ignored) >= 2  # the ghosting this test is for
    assert max(marked) <= 1 and sum(marked) < sum(ignored)
