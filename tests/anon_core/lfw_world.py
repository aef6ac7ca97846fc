"""A small first pass over real people (``../shared/data/lfw_dev``), built once per test process
for the surrogate tests that need real identities: two photos each of the first people with at
least two, their faces detected (CenterFace), landmarked and embedded (dlib) and clustered."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from faceveil.anon_core.detectors import Detector, build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.surrogate import SurrogateContext, collect_faces, context_from_table
from tests.factories import shared_path

PEOPLE = 20
PHOTOS = 2


@dataclass(frozen=True)
class LfwWorld:
    """``photos``: person number -> that person's RGB photos; ``detector`` and ``context``: the
    first pass over all of them."""

    photos: dict[int, list[np.ndarray]]
    detector: Detector
    context: SurrogateContext


@lru_cache(maxsize=1)
def _built() -> LfwWorld:
    root = shared_path("data", "lfw_dev", "manifest.csv").parent
    by_person = defaultdict(list)
    with open(root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_person[row["identity"]].append(row["path"])
    chosen = [p for p in sorted(by_person) if len(by_person[p]) >= PHOTOS][:PEOPLE]
    photos = {
        n: [
            cv2.cvtColor(cv2.imread(str(root / p)), cv2.COLOR_BGR2RGB)
            for p in by_person[person][:PHOTOS]
        ]
        for n, person in enumerate(chosen)
    }
    samples = [(f"p{n:02d}_{k}", rgb) for n, rgbs in photos.items() for k, rgb in enumerate(rgbs)]
    detector = build_detector("centerface", threads=1)
    table = collect_faces(samples, detector, Dlib68(), DlibEmbedder())
    return LfwWorld(photos, detector, context_from_table(table))


def lfw_world() -> LfwWorld:
    """The first pass (skips the calling test, with the reason, when ../shared is absent)."""
    shared_path("data", "lfw_dev", "manifest.csv")
    return _built()
