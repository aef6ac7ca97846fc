"""``FaceMemo``: a second pass that takes the first pass's detections, landmarks and embeddings
gives the same bytes as one that computes them, and computes whatever the records do not hold
for exactly its input (a changed image, other boxes). Real models on real people
(``../shared/data/lfw_dev``: skipped without it)."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import pytest

from faceveil.anon_core.config import AnonConfig
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.facememo import FaceMemo, FaceRecords, pixel_digest
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.pipeline import FaceAnonymizer
from faceveil.anon_core.surrogate.build import surrogate_from_table
from faceveil.anon_core.surrogate.context import collect_faces
from tests.anon_core.lfw_world import lfw_world

KEY = bytes(range(32))


@lru_cache(maxsize=1)
def _first_pass():
    """The photos of ``lfw_world`` (two each of 20 people), the first pass's records of them
    and its surrogate method."""
    photos = [rgb for rgbs in lfw_world().photos.values() for rgb in rgbs]
    memo = FaceMemo(FaceRecords("test models"), keep=True)
    detector = build_detector("centerface", threads=1)
    samples = [(f"s{i}", rgb) for i, rgb in enumerate(photos)]
    table = collect_faces(
        samples, memo.detector(detector), memo.landmarks(Dlib68()), memo.embedder(DlibEmbedder())
    )
    method, _ = surrogate_from_table(KEY, table, {"donors": 4})
    return photos, memo.records, method, detector


@pytest.fixture(scope="module")
def first_pass():
    return _first_pass()


def _anonymizer(method, detector, records: FaceRecords | None) -> tuple[FaceAnonymizer, FaceMemo]:
    """The surrogate's second-pass anonymizer; with ``records``, its models behind a memo of
    them (``FaceMemo.anonymizer``, as ``jobs.firstpass.surrogate_anonymizer`` builds it)."""
    config = AnonConfig(method="surrogate", threads=1, image_format="png")
    memo = FaceMemo(records)
    if records is None:
        return FaceAnonymizer(config, detector=detector, method=method), memo
    return memo.anonymizer(config, detector, method), memo


def test_records_give_the_same_bytes_without_detecting_again(first_pass):
    photos, records, method, detector = first_pass
    assert len(records) == len(photos)
    plain, _ = _anonymizer(method, detector, None)
    recalled, memo = _anonymizer(method, detector, records)
    want = plain.batch(photos)
    got = recalled.batch(photos)
    assert sum(r.status == "anonymized" for r in want) >= 0.9 * len(photos)
    assert [r.encoded for r in got] == [r.encoded for r in want]
    assert memo.counts.reused["detect"] == len(photos) and memo.counts.computed["detect"] == 0
    with_faces = sum(len(r.faces) > 0 for r in want)
    assert memo.counts.reused["landmarks"] == with_faces
    assert memo.counts.computed["landmarks"] == 0


def test_a_changed_image_is_detected_and_embedded_again(first_pass):
    photos, records, method, detector = first_pass
    changed = photos[0].copy()
    changed[changed.shape[0] // 2, changed.shape[1] // 2] ^= 1  # one pixel, one bit
    assert pixel_digest(changed) != pixel_digest(photos[0])
    batch = [changed, *photos[1:4]]
    plain, _ = _anonymizer(method, detector, None)
    recalled, memo = _anonymizer(method, detector, records)
    assert [r.encoded for r in recalled.batch(batch)] == [r.encoded for r in plain.batch(batch)]
    assert memo.counts.computed == {"detect": 1, "landmarks": 1, "embed": 1}
    assert memo.counts.reused["detect"] == 3


def test_faces_not_in_the_records_are_computed(first_pass):
    """Other boxes in a recorded image (a merge of nested detections moves a box): the
    landmarks and embeddings of those faces come from the models, not from the records."""
    photos, records, _, detector = first_pass
    image = photos[2]
    faces = detector([image])[0]
    assert len(faces) >= 1
    moved = replace(faces, boxes=faces.boxes + np.array([2, 2, 2, 2, 0], np.float32))
    memo = FaceMemo(records)
    embedder, landmarks = DlibEmbedder(), Dlib68()
    wrapped_embedder, wrapped_landmarks = memo.embedder(embedder), memo.landmarks(landmarks)
    assert np.array_equal(wrapped_embedder([image], [faces])[0], embedder([image], [faces])[0])
    assert memo.counts.reused["embed"] == 1
    got = wrapped_embedder([image], [moved])[0]
    assert np.array_equal(got, embedder([image], [moved])[0])
    got68 = wrapped_landmarks([image], [moved])[0]
    assert np.array_equal(got68.landmarks68, landmarks([image], [moved])[0].landmarks68)
    assert memo.counts.computed == {"detect": 0, "landmarks": 1, "embed": 1}


def test_records_repr_shows_counts_only(first_pass):
    _, records, _, _ = first_pass
    text = repr(records)
    assert text.startswith(f"FaceRecords({len(records)} images")
    assert "array" not in text and "test models" not in text
