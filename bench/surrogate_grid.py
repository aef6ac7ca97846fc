"""A before/after grid of surrogate faces: the bundled public-domain photos, then their
surrogates at several ``--privacy`` settings, one row each.

Run from the repository root: ``python -m bench.surrogate_grid`` (writes
``bench-out/surrogate_grid.png``, which git ignores). The donor bank comes from ``--data``
(default ``../shared/data/lfw_dev``): the surrogates are averages of k of those people, so the
picture is for looking at, not for committing or sharing beyond the data's own terms.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import shared_root
from faceveil.anon_core import demo_data
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.surrogate.context import collect_faces, context_from_table

PHOTOS = ("astronaut.png", "obama.jpg", "biden.jpg", "two_people.jpg", "obama3.jpg")
TILE = 220


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    shared = shared_root()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(shared / "data" / "lfw_dev"), help="donor images")
    p.add_argument("--labels", help="attribute labels CSV: donors share gender and age")
    p.add_argument("--privacy", default="0,0.5,1")
    p.add_argument("--donors", type=int, default=6)
    p.add_argument("--out", default="bench-out/surrogate_grid.png")
    return p.parse_args(argv)


def _donor_images(root: Path):
    for path in sorted((root / "images").rglob("*.jpg")) or sorted(root.rglob("*.jpg")):
        yield str(path.relative_to(root)), decode_image(path.read_bytes()).rgb


def _tile(rgb: np.ndarray) -> np.ndarray:
    img = Image.fromarray(rgb)
    return np.asarray(img.resize((round(img.width * TILE / img.height), TILE)))


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"surrogate_grid: {data} not found (needs ../shared)", file=sys.stderr)
        return 2
    detector, landmarks, embedder = (
        build_detector("centerface", threads=1),
        Dlib68(),
        DlibEmbedder(),
    )
    table = collect_faces(_donor_images(data), detector, landmarks, embedder)
    probes = ()
    if args.labels:
        from faceveil.anon_core.surrogate.build import attribute_probes

        probes = attribute_probes(args.labels, detector, embedder)
    context = context_from_table(table, attributes=probes)
    originals = [decode_image(demo_data.path(name).read_bytes()).rgb for name in PHOTOS]
    rows = [np.hstack([_tile(o) for o in originals])]
    key = bytes(range(32))  # a fixed demo key: the same picture every run
    for privacy in (float(p) for p in args.privacy.split(",")):
        method = Surrogate(key, context, privacy=privacy, donors=args.donors)
        anonymizer = FaceAnonymizer(AnonConfig(method="surrogate"), detector, method)
        results = anonymizer.batch(originals)
        rows.append(np.hstack([_tile(r.output.image) for r in results]))
        used = [m for r in results for m in r.output.methods]
        print(f"privacy {privacy}: methods applied {used}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.vstack(rows)).save(out)
    print(f"wrote {out} (rows: originals, then privacy {args.privacy})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
