"""Issue 12 part 5's benchmark: what links two anonymized photos of one person, per ``--linkage``.

Run from the repository root: ``python -m bench.bench_linkage`` (``--people 60 --photos 3`` by
default: the first people of lfw_dev with at least that many photos). A first pass over those
photos (CenterFace, dlib landmarks and ResNet) builds the surrogate's clusters and donor bank;
then every photo is anonymized with ``--linkage person`` and with ``--linkage none`` (default
donors; ``--privacy`` as given, else the method's default) and, for the photos whose one face
got a surrogate under both:

- link rate: how often an anonymized photo's most similar other anonymized photo is of the same
  person (an attacker holding only the output who wants to group it by person), by MobileFaceNet
  and by dlib's ResNet, each aligned at the original's landmarks; the originals' rate and chance
  (photos - 1 of the other photos) are printed beside it;
- pseudonym links: the share of same-person pairs whose public ``pseudonym`` is equal;
- images per CPU-second of the second pass (one core).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from bench.common import format_table, lfw_dev_parser, machine_info, missing_shared
from faceveil.anon_core import AnonConfig, FaceAnonymizer
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder, InsightFaceEmbedder
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.surrogate import collect_faces, context_from_table
from faceveil.anon_core.surrogate.synthesis import DEFAULT_PRIVACY

KEY = b"bench-linkage-key-0123456789abcd"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = lfw_dev_parser(__doc__, "--model", "the independent recognizer (InsightFace ONNX)")
    p.add_argument("--people", type=int, default=60)
    p.add_argument("--photos", type=int, default=3, help="photos per person")
    p.add_argument(
        "--privacy", type=float, default=DEFAULT_PRIVACY, help="the surrogate's --privacy"
    )
    return p.parse_args(argv)


def _photos(root: Path, people: int, photos: int) -> tuple[list[np.ndarray], np.ndarray]:
    by_person = defaultdict(list)
    with open(root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_person[row["identity"]].append(row["path"])
    chosen = [p for p in sorted(by_person) if len(by_person[p]) >= photos][:people]
    paths = [(n, path) for n, p in enumerate(chosen) for path in by_person[p][:photos]]
    images = [cv2.cvtColor(cv2.imread(str(root / path)), cv2.COLOR_BGR2RGB) for _, path in paths]
    return images, np.array([n for n, _ in paths])


def _anonymize(context, detector, images: list[np.ndarray], linkage: str, privacy: float):
    """Every image's result, and images per CPU-second."""
    method = Surrogate(KEY, context, privacy=privacy, linkage=linkage)
    anonymizer = FaceAnonymizer(AnonConfig(method="surrogate", threads=1), detector, method)
    start = time.process_time()
    results = [anonymizer(image) for image in images]
    return results, len(images) / (time.process_time() - start)


def _link_rate(vectors: np.ndarray, who: np.ndarray) -> float:
    """Share of photos whose most similar other photo (cosine) shows the same person."""
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(who[sim.argmax(axis=1)] == who))


def _pseudonym_links(results: list, who: np.ndarray) -> float:
    names = [r.output.pseudonyms[0] for r in results]
    pairs = [(i, j) for i in range(len(who)) for j in range(i + 1, len(who)) if who[i] == who[j]]
    return float(np.mean([names[i] is not None and names[i] == names[j] for i, j in pairs]))


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING)
    if missing_shared("bench_linkage", Path(args.data) / "manifest.csv", args.model):
        return 2
    images, who = _photos(Path(args.data), args.people, args.photos)
    detector = build_detector("centerface", threads=1)
    table = collect_faces(list(zip(map(str, range(len(images))), images, strict=True)),
                          detector, Dlib68(), DlibEmbedder())  # fmt: skip
    context = context_from_table(table)
    runs = {k: _anonymize(context, detector, images, k, args.privacy) for k in ("person", "none")}
    keep = [i for i in range(len(images))
            if all(r[0][i].output.methods == ("surrogate",) for r in runs.values())]  # fmt: skip
    who = who[keep]
    faces = [runs["person"][0][i].faces for i in keep]
    embedders = {
        "MobileFaceNet": InsightFaceEmbedder(args.model, threads=1),
        "dlib": DlibEmbedder(),
    }
    sets = {"original": [images[i] for i in keep]}
    sets |= {k: [r[0][i].output.image for i in keep] for k, r in runs.items()}
    rows = []
    for name, rgbs in sets.items():
        rates = [_link_rate(np.concatenate(e(rgbs, faces)), who) for e in embedders.values()]
        result = runs.get(name)
        pseud = f"{_pseudonym_links([result[0][i] for i in keep], who):.1%}" if result else "–"
        speed = f"{result[1]:.2f}" if result else "–"
        rows.append([name, *(f"{r:.1%}" for r in rates), pseud, speed])
    chance = (args.photos - 1) / max(len(keep) - 1, 1)
    print(f"bench_linkage: {len(keep)} photos of {len(set(who.tolist()))} people "
          f"({len(images)} read), privacy {args.privacy}, chance {chance:.1%}; "
          f"{machine_info()['cpu']}")  # fmt: skip
    headers = ["output", *(f"link rate ({e})" for e in embedders), "pseudonym links", "img/CPU-s"]
    print(format_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
