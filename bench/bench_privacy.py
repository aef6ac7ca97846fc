"""Issue 2's privacy benchmark: rank-1 re-identification of anonymized lfw_dev probes.

Run from the repository root: ``python -m bench.bench_privacy`` (``--limit-identities 60`` for a
quick look, ``--methods blur:strength=0.25,pixelate:blocks=6`` to try method strengths). Each
probe (every lfw_dev image but one per identity, anonymized) is matched against a gallery of one
original per identity by the MobileFaceNet attacker, which crops the anonymized face with the
ORIGINAL's landmarks (worst case). Target: rank-1 <= 2% for every baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bench.common import format_table, lfw_dev_parser, machine_info, missing_shared
from faceveil.jobs.evaluate import EvalConfig, parse_methods
from faceveil.jobs.evaluate.runner import run_eval

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.02


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = lfw_dev_parser(__doc__, "--attacker", "recognition ONNX of the attacker")
    p.add_argument("--methods", default="blur,pixelate,mask", help="name[:key=value...],...")
    p.add_argument("--limit-identities", type=int, help="first N identities with 2+ images")
    p.add_argument("--target", type=float, default=TARGET, help="highest acceptable rank-1")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: default)")
    return p.parse_args(argv)


def _rows(report: dict, attacker: str, target: float) -> list[list[str]]:
    rows = []
    for m in report["methods"]:
        if not m["available"]:
            rows.append([m["label"], "–", "–", "–", f"unavailable: {m['reason']}"])
            continue
        p = m["privacy"][attacker]
        verdict = "ok" if p["rank1"] <= target else f"MISSED (> {100 * target:.0f}%)"
        rows.append(
            [
                m["label"],
                f"{100 * p['rank1']:.2f}% ({p['rank1_correct']}/{p['n_probes']})",
                f"{100 * p['tar_at_far']:.2f}%",
                f"{m['throughput']['images_per_s_wall']:.1f}",
                verdict,
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; 2 when the shared data is missing."""
    args = _arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data, attacker = Path(args.data), Path(args.attacker)
    if missing_shared("bench_privacy", data / "manifest.csv", attacker):
        return 2
    config = EvalConfig(
        images=str(data), identities=str(data / "manifest.csv"), report_dir="",
        methods=parse_methods(args.methods), attacker_models=(str(attacker),),
        limit_identities=args.limit_identities, utility=False, examples=0, threads=args.threads,
    )  # fmt: skip
    report = run_eval(config).report
    d, base = report["dataset"], report["attackers"][0]["on_originals"]
    print(f"machine: {machine_info()}")
    print(
        f"lfw_dev: {d['n_images']} images, {d['n_identities']} identities, gallery "
        f"{d['n_gallery']}, probes {d['n_probes']}; attacker {attacker.name} "
        f"(rank-1 on unmodified probes {100 * base['rank1']:.1f}%, chance "
        f"{100 / max(d['n_gallery'], 1):.2f}%)"
    )
    headers = ["method", "rank-1", "TAR@FAR=1e-3", "img/s", f"target <= {100 * args.target:g}%"]
    rows = _rows(report, attacker.name, args.target)
    print(format_table(headers, rows))
    missed = [r[0] for r in rows if r[-1].startswith("MISSED")]
    if missed:
        print(f"TARGET MISSED by: {', '.join(missed)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "report": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
