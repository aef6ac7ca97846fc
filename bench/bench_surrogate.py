"""Issue 4's benchmark: the surrogate method's privacy, utility and speed on real faces.

Run from the repository root: ``python -m bench.bench_surrogate`` (``--limit-identities 60`` for
a quick look). On lfw_dev, for ``--privacy`` 0, 0.5 and 1 with gender and age probes fitted on
utkface_dev (what ``faceveil run --attributes`` does), plus the default without probes:

- rank-1 re-identification by the MobileFaceNet attacker, which crops the anonymized face with
  the ORIGINAL's landmarks (gallery: one original per identity; probes: the other images);
- faces still found by a second detector (SCRFD 2.5G, not the CenterFace used inside);
- 68-point landmark error between original and anonymized face / inter-ocular distance;
- both of these again over the faces that got a surrogate (the others were masked because
  their landmarks were unreliable; a masked face is not meant to be found);
- gender kept and age difference between original and anonymized face, judged by logistic /
  ridge probes fitted on utkface_dev, twice: on dlib embeddings (the more accurate judge, but
  the same embedder the surrogate picks donors with) and on the attacker's MobileFaceNet
  embeddings (independent, less accurate); their cross-validated accuracy is printed;
- images per CPU-second (one core) at 250 x 250;
- the share of all faces (background faces too) that got a surrogate rather than a mask.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bench.common import format_table, lfw_dev_parser, machine_info, missing_shared, shared_root
from faceveil.anon_core.surrogate.synthesis import DEFAULT_PRIVACY
from faceveil.jobs.evaluate import EvalConfig, parse_methods
from faceveil.jobs.evaluate.runner import run_eval

TARGETS = {"rank1": 0.10, "redetected": 0.98, "landmark": 0.08, "gender": 0.95, "speed": 3.0}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    shared = shared_root()
    p = lfw_dev_parser(__doc__)
    p.add_argument("--labels", default=str(shared / "data" / "utkface_dev" / "labels.csv"),
                   help="attribute labels (UTKFace style)")  # fmt: skip
    p.add_argument("--models", default=str(shared / "models"),
                   help="folder with mobilefacenet_128d.onnx and the SCRFD detectors")  # fmt: skip
    p.add_argument("--privacy", default="0,0.5,1", help="privacy settings with probes")
    p.add_argument("--limit-identities", type=int, help="first N identities with 2+ images")
    p.add_argument("--attribute-faces", type=int, default=300)
    p.add_argument("--json", help="also write the figures here")
    return p.parse_args(argv)


def _specs(privacy: list[str], labels: str) -> str:
    rows = [f"surrogate:privacy={p}:attributes={labels}" for p in privacy]
    return ",".join([*rows, f"surrogate:privacy={DEFAULT_PRIVACY}"])


def _verdict(value: float | None, target: float, higher: bool) -> str:
    if value is None:
        return "–"
    ok = value >= target if higher else value <= target
    return "" if ok else " MISSED"


def _row(m: dict, attacker: str) -> list[str]:
    opts = m["options"]
    probes = "yes" if opts.get("attributes") else "no"
    if not m["available"]:
        return [str(opts.get("privacy")), probes, f"unavailable: {m['reason']}", *[""] * 8]
    rank1 = m["privacy"][attacker]["rank1"]
    u = m.get("utility") or {}
    redet = u.get("redetected")
    lmk = u.get("landmark_error_mean")
    own = (u.get("by_method") or {}).get("surrogate", {})
    gender, age = u.get("gender_agreement"), u.get("age_abs_diff_years")
    gender_mfn = u.get("attacker_judge_gender_agreement")
    speed = m["throughput"]["images_per_cpu_s"]
    applied = m.get("applied", {})
    share = applied.get("surrogate", 0) / max(sum(applied.values()), 1)

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}%"

    return [
        str(opts.get("privacy")),
        probes,
        pct(rank1) + _verdict(rank1, TARGETS["rank1"], False),
        pct(redet) + _verdict(redet, TARGETS["redetected"], True),
        pct(own.get("redetected")),
        ("–" if lmk is None else f"{lmk:.3f}") + _verdict(lmk, TARGETS["landmark"], False),
        "–" if own.get("landmark_error_mean") is None else f"{own['landmark_error_mean']:.3f}",
        pct(gender) + _verdict(gender, TARGETS["gender"], True),
        pct(gender_mfn),
        "–" if age is None else f"{age:.1f}",
        f"{speed:.2f}" + _verdict(speed, TARGETS["speed"], True),
        pct(share),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; 2 when the shared data is missing."""
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data, models = Path(args.data), Path(args.models)
    attacker = models / "mobilefacenet_128d.onnx"
    if missing_shared("bench_surrogate", data / "manifest.csv", attacker, args.labels):
        return 2
    config = EvalConfig(
        images=str(data), identities=str(data / "manifest.csv"), report_dir="",
        methods=parse_methods(_specs(args.privacy.split(","), args.labels)),
        attacker_models=(str(attacker),), attributes=args.labels, attribute_judge="both",
        second_detector="scrfd", model_root=str(models), limit_identities=args.limit_identities,
        attribute_faces=args.attribute_faces, examples=0, threads=1, progress=False,
    )  # fmt: skip
    report = run_eval(config).report
    d, base = report["dataset"], report["attackers"][0]["on_originals"]
    quality = report.get("attribute_probes") or {}
    print(f"machine: {machine_info()}")
    print(
        f"lfw_dev: {d['n_images']} images, {d['n_identities']} identities, gallery "
        f"{d['n_gallery']}, probes {d['n_probes']}; attacker {attacker.name} (rank-1 on "
        f"unmodified probes {100 * base['rank1']:.1f}%, chance "
        f"{100 / max(d['n_gallery'], 1):.2f}%)"
    )
    for name, q in (("dlib", quality), (attacker.name, quality.get("attacker_judge") or {})):
        if q:
            print(
                f"attribute judge on {name} embeddings, utkface_dev {q.get('n_used')} faces: "
                f"gender CV accuracy {q.get('gender_cv_accuracy', 0):.3f}, age CV MAE "
                f"{q.get('age_cv_mae_years', 0):.1f} years"
            )
    headers = ["privacy", "probes", "rank-1 (<=10%)", "detected (>=98%)", "of surrogates",
               "landmark (<=0.08)", "of surrogates",
               "gender kept, dlib judge (>=95%)", "gender kept, MFN judge", "age diff (y)",
               "img/CPU-s (>=3)",
               "surrogate share"]  # fmt: skip
    rows = [_row(m, attacker.name) for m in report["methods"]]
    print(format_table(headers, rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "report": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
