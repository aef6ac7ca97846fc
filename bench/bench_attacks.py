"""Issue 13's benchmark: re-identification of anonymized lfw_dev faces under every attack
(aligned, parrot, inversion on features and on pixels) and every recognizer, the worst case
per method, and detection recall per gender, race, age band and face size on utkface_dev.

Run from the repository root: ``python -m bench.bench_attacks`` (``--limit-identities 60`` for
a quick look). Targets: worst-case rank-1 <= 3% for every shipped method at its default; no
group below 99% recall; the 24-pixel row reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bench.common import format_table, lfw_dev_parser, machine_info, missing_shared, shared_root
from faceveil.jobs.evaluate.cli import add_attack_options, attack_fields
from faceveil.jobs.evaluate.config import ATTACKS, EvalConfig, parse_methods
from faceveil.jobs.evaluate.runner import run_eval

ATTACK_KEYS = ("aligned", "parrot_gallery_anonymized", "parrot_gallery_original",
               "parrot_finetune_gallery_anonymized", "parrot_finetune_gallery_original",
               "inversion", "inversion_pixels")  # fmt: skip
PRIVACY_TARGET = 0.03
RECALL_TARGET = 0.99


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = lfw_dev_parser(__doc__, "--attacker", "recognition ONNX (dlib's ResNet is added beside it)")
    labels = shared_root() / "data" / "utkface_dev" / "labels.csv"
    add_attack_options(p, attacks=ATTACKS, recall_by=str(labels))
    p.add_argument("--methods", default="blur,pixelate,mask,surrogate")
    p.add_argument("--limit-identities", type=int, help="first N identities with 2+ images")
    p.add_argument("--json", help="also write the whole report here")
    return p.parse_args(argv)


def _attack_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    recognizers = [a["name"] for a in report["attackers"]]
    keys = [k for k in ATTACK_KEYS if any(k in m.get("attacks", {}) for m in report["methods"])]
    headers = ["method", *(f"{k} / {r[:12]}" for k in keys for r in recognizers)]
    headers += ["worst rank-1", "worst TAR", f"<= {100 * PRIVACY_TARGET:g}%"]
    rows = []
    for m in report["methods"]:
        if not m["available"]:
            rows.append([m["label"], f"unavailable: {m['reason']}"])
            continue
        cells = [m["label"]]
        for k in keys:
            for r in recognizers:
                value = m["attacks"].get(k, {}).get(r, {}).get("rank1")
                cells.append("–" if value is None else f"{100 * value:.1f}%")
        w = m["worst"]
        ok = w["rank1"] is not None and w["rank1"] <= PRIVACY_TARGET
        cells += [f"{100 * w['rank1']:.1f}% ({w['rank1_attack']})",
                  f"{100 * w['tar_at_far']:.2f}%", "ok" if ok else "MISSED"]  # fmt: skip
        rows.append(cells)
    return headers, rows


def _recall_rows(recall: dict) -> list[list[str]]:
    rows = []
    for kind, groups in recall.get("by_group", {}).items():
        for g in groups:
            verdict = "ok" if g["recall"] >= RECALL_TARGET else "MISSED"
            rows.append([kind, g["group"], str(g["n"]), f"{100 * g['recall']:.1f}%",
                         str(g["residual"]), verdict])  # fmt: skip
    for r in recall.get("small_faces", []):
        verdict = "ok" if r["recall"] >= RECALL_TARGET else "MISSED"
        rows.append(["face width", f"{r['size_px']} px", str(r["n"]),
                     f"{100 * r['recall']:.1f}%", str(r["residual"]), verdict])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; 2 when the shared data is missing."""
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = Path(args.data)
    if missing_shared("bench_attacks", data / "manifest.csv", args.attacker, args.recall_by):
        return 2
    config = EvalConfig(
        images=str(data), identities=str(data / "manifest.csv"), report_dir="",
        methods=parse_methods(args.methods), attacker_models=(args.attacker,),
        limit_identities=args.limit_identities, utility=False, examples=0, progress=True,
        **attack_fields(args),
    )  # fmt: skip
    report = run_eval(config).report
    d = report["dataset"]
    print(f"machine: {machine_info()}")
    print(
        f"lfw_dev: {d['n_images']} images, {d['n_identities']} identities; aligned gallery "
        f"{d['n_gallery']}; learning attackers: {json.dumps(d['attack_split'])}; "
        f"budget {json.dumps(report['attack_budget'])}; {report['elapsed_s']} s"
    )
    headers, rows = _attack_rows(report)
    print(format_table(headers, rows))
    for m in report["methods"]:
        if "pixel_inversion" in m:
            print(f"pixel inversion, {m['label']}: {json.dumps(m['pixel_inversion'])}")
        if "parrot_finetune" in m:
            print(f"parrot fine-tune, {m['label']}: {json.dumps(m['parrot_finetune'])}")
    missed = [r[0] for r in rows if r[-1] == "MISSED"]
    if missed:
        print(f"PRIVACY TARGET MISSED by: {', '.join(missed)}")
    recall = _recall_rows(report["recall"])
    print(format_table(["kind", "group", "faces", "recall", "residual", "target 99%"], recall))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
