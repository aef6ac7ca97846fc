"""Issue 12 part 3: how much of the photo's fine detail a surrogate face carries, octave by octave.

The bundled public-domain photos with large faces (obama3.jpg, biden.jpg, obama.jpg), each
rescaled so its face runs from about lfw_dev's size to about 800 pixels tall, are anonymized with
``--method surrogate`` (a fixed key, donors from the first ``--donor-images`` of lfw_dev). For
each, the surrogate's fine detail on the cheeks over the photo's: one difference-of-Gaussians
octave per column (0-0.5, 0.5-1, 1-2, 2-4 and 4-8 pixels), the spread of each taken as its
interquartile range. 1 means as detailed as the photo; a mean of k donors alone holds about
1 / sqrt(k) of one face's texture.

Run from the repository root: ``python -m bench.bench_detail``. The measurement is the bench's
own, not ``anon_core.surrogate.grain``'s, so a checkout from before that module runs it too.

With ``--splits N`` it also anonymizes the whole lfw_dev with the default surrogate twice,
with the detail given back and without (``faceveil eval``'s own pass, one key for both), and
attacks both outputs on the same N identity splits (``bench_line_up``'s comparison).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bench.bench_line_up import print_over_splits, privacy_over_splits
from bench.common import format_table, lfw_dev_parser, machine_info, shared_root
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.surrogate.context import collect_faces, context_from_table
from faceveil.anon_core.surrogate.donors import CHEEK_A, CHEEK_B

PHOTOS = ("obama3.jpg", "biden.jpg", "obama.jpg")
SIGMAS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
KEY = bytes(range(32))  # a fixed key: the same surrogates every run


def octave_spreads(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Interquartile range / 1.349 of each difference-of-Gaussians octave of the grey image."""
    grey = rgb.astype(np.float64).mean(axis=2)
    blurs = [grey if s == 0 else cv2.GaussianBlur(grey, (0, 0), s) for s in SIGMAS]
    out = []
    for fine, coarse in zip(blurs[:-1], blurs[1:], strict=True):
        q1, q3 = np.percentile((fine - coarse)[mask], [25, 75])
        out.append((q3 - q1) / 1.349)
    return np.array(out)


def cheeks(shape: tuple[int, ...], points68: np.ndarray) -> np.ndarray:
    """Both cheeks of a face (polygons of its 68 points), eroded by 4 pixels."""
    mask = np.zeros(shape[:2], np.uint8)
    for part in (CHEEK_A, CHEEK_B):
        cv2.fillPoly(mask, [np.round(points68[part]).astype(np.int32)], 1)
    return cv2.erode(mask, np.ones((9, 9), np.uint8)) > 0


def _arguments(argv: list[str] | None):
    p = lfw_dev_parser(__doc__)
    p.add_argument("--donor-images", type=int, default=400, help="lfw_dev images in the bank")
    p.add_argument("--face-heights", default="110,250,500,800", help="face heights, pixels")
    p.add_argument("--photos", default=",".join(PHOTOS))
    p.add_argument("--splits", type=int, default=0, help="also attack with and without detail")
    p.add_argument("--attacker", default=str(shared_root() / "models" / "mobilefacenet_128d.onnx"))
    return p.parse_args(argv)


def _no_detail(reference, current, *_args, **_kwargs) -> np.ndarray:
    return np.zeros(current[1].shape, np.float32)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    data = Path(args.data)
    fixtures = shared_root() / "data" / "fixtures"
    if not (data / "manifest.csv").is_file() or not fixtures.is_dir():
        print(f"bench_detail: {data} or {fixtures} not found (needs ../shared)", file=sys.stderr)
        return 2
    print("machine:", machine_info())
    start = time.perf_counter()
    detector, landmarks = build_detector("centerface", threads=1), Dlib68()
    found = sorted((data / "images").rglob("*.jpg")) or sorted(data.rglob("*.jpg"))
    paths = itertools.islice(found, args.donor_images)
    # sample ids relative to the data: donor draws hash them, whatever folder the data is in
    images = ((str(p.relative_to(data)), decode_image(p.read_bytes()).rgb) for p in paths)
    context = context_from_table(collect_faces(images, detector, landmarks, DlibEmbedder()))
    anonymizer = FaceAnonymizer(AnonConfig(method="surrogate"), detector, Surrogate(KEY, context))
    rows = []
    for name in args.photos.split(","):
        photo = decode_image((fixtures / name).read_bytes()).rgb
        found = landmarks([photo], detector([photo]))[0]
        if len(found) != 1:
            rows.append([name, "-", "-", f"{len(found)} faces found", *("-" * 4)])
            continue
        height = float(np.ptp(found.landmarks68[0][:, 1])) * 1.35  # brows to chin, plus forehead
        for wanted in (float(h) for h in args.face_heights.split(",")):
            scale = wanted / height
            how = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
            rgb = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=how)
            faces = landmarks([rgb], detector([rgb]))[0]
            result = anonymizer.batch([rgb])[0]
            if len(faces) != 1 or result.output.methods != ("surrogate",):
                note = f"no surrogate: {result.output.methods}"
                rows.append([name, f"{wanted:.0f}", "-", note, *("-" * 4)])
                continue
            points = faces.landmarks68[0].astype(np.float64)
            mask = cheeks(rgb.shape, points)
            ratio = octave_spreads(result.output.image, mask) / octave_spreads(rgb, mask)
            iod = np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0))
            rows.append([name, f"{wanted:.0f}", f"{iod:.0f}", *(f"{r:.2f}" for r in ratio)])
    octaves = [f"{a:g}-{b:g} px" for a, b in zip(SIGMAS[:-1], SIGMAS[1:], strict=True)]
    print("surrogate's detail on the cheeks over the photo's, per octave:")
    print(format_table(["photo", "face height", "eyes apart", *octaves], rows))
    if args.splits:
        from faceveil.anon_core.surrogate import grain

        variants = {"detail given back": grain.missing_detail, "no detail": _no_detail}
        figures = privacy_over_splits(
            data, args.attacker, args.splits, (grain, "missing_detail"), variants
        )
        print_over_splits(figures, args.splits)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
