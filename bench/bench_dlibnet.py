"""dlib's face recognizer on dlib's own kernels against the same weights in onnxruntime
(``anon_core.dlibnet``), side by side on the same lfw_dev faces in one process.

For each face (CenterFace boxes, dlib's 5-point shape, dlib's 150-pixel chip) it times the
descriptor both ways with ``time.process_time`` (one thread each) and prints milliseconds of CPU
per face, the ratio, and how far apart the descriptors are (largest difference of a coordinate,
smallest cosine).

    python -m bench.bench_dlibnet --images 300
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import dlib
import numpy as np

from bench.common import lfw_dev_parser, missing_shared
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.dlibnet import WEIGHTS, DlibResNet
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.models import dlib_model


def _faces(data: Path, images: int):
    """(image, dlib shapes) for the first ``images`` lfw_dev photos, CenterFace's boxes."""
    with open(data / "manifest.csv", newline="") as f:
        paths = sorted(row["path"] for row in csv.DictReader(f))[:images]
    detector = build_detector("centerface", threads=1)
    shape = dlib.shape_predictor(str(dlib_model("shape_predictor_5_face_landmarks.dat")))
    for p in paths:
        rgb = decode_image((data / p).read_bytes()).rgb
        found = detector([rgb])[0]
        yield rgb, [shape(rgb, dlib.rectangle(*(int(v) for v in b[:4]))) for b in found.boxes]


def measure(data: Path, images: int) -> dict:
    """CPU seconds of both ways over the faces, and their largest disagreement."""
    own = dlib.face_recognition_model_v1(str(dlib_model(WEIGHTS)))
    net = DlibResNet(threads=1)
    seconds = {"dlib": 0.0, "onnxruntime": 0.0}
    want, got = [], []
    for rgb, shapes in _faces(data, images):
        if not shapes:
            continue
        found = dlib.full_object_detections()
        found.extend(shapes)
        start = time.process_time()
        want.append(np.array([list(v) for v in own.compute_face_descriptor(rgb, found)]))
        middle = time.process_time()
        got.append(net.describe(rgb, shapes))
        seconds["dlib"] += middle - start
        seconds["onnxruntime"] += time.process_time() - middle
    a, b = np.concatenate(want), np.concatenate(got)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"faces": len(a), "seconds": seconds, "max_abs": float(np.abs(a - b).max()),
            "min_cosine": float(cosine.min())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = lfw_dev_parser(__doc__)
    p.add_argument("--images", type=int, default=300)
    args = p.parse_args(argv)
    if missing_shared("bench_dlibnet", Path(args.data) / "manifest.csv"):
        return 2
    r = measure(Path(args.data), args.images)
    ms = {k: 1000 * v / r["faces"] for k, v in r["seconds"].items()}
    print(f"{r['faces']} faces of {args.images} lfw_dev images, one thread each")
    print("kernels       ms CPU per face")
    for name, value in ms.items():
        print(f"{name:<12}  {value:6.1f}")
    print(f"dlib / onnxruntime: {ms['dlib'] / ms['onnxruntime']:.1f}x")
    print(f"largest coordinate difference {r['max_abs']:.2e}, "
          f"smallest cosine {r['min_cosine']:.7f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
