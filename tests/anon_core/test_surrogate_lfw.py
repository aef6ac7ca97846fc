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
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.surrogate import collect_faces, context_from_table
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
