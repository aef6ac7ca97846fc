"""Issue 12 part 3: donors lined up by optical flow before they are averaged, against the plain
average, on a donor bank built from lfw_dev.

For random donor sets of the bank (k = 4, the default, and 6), the mean texture is made both
ways (``DonorBank.mean_face`` lines donors up; the plain one is the same trimmed mean and
unsharp mask without it) and printed side by side:

- edge retention: mean Sobel edge strength inside the inner face (brows to chin) of the mean,
  over that of its own donors. An average of misaligned faces has doubled, softer edges and a
  lower figure; one face alone would score 1;
- milliseconds of CPU per mean texture.

With ``--splits N`` it also anonymizes the whole lfw_dev both ways with the default surrogate
(``faceveil eval``'s own pass, one key for both) and attacks each output on N identity splits
(aligned, parrot, inversion; MobileFaceNet and dlib): the mean and spread of rank-1 over the
splits, so that a difference between the two is read against how much one split moves.

    python -m bench.bench_line_up --images 400 --sets 100
    python -m bench.bench_line_up --sets 0 --splits 8      # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import missing_shared, shared_root
from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.embeddings import DlibEmbedder
from faceveil.anon_core.imageio import decode_image
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.surrogate import collect_faces, context_from_table
from faceveil.anon_core.surrogate import donors as donor_module


def _edges(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    grey = grey.astype(np.float32)
    return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))


def _bank(data: Path, images: int):
    with open(data / "manifest.csv", newline="") as f:
        paths = sorted(row["path"] for row in csv.DictReader(f))[:images]
    samples = ((p, decode_image((data / p).read_bytes()).rgb) for p in paths)
    models = (build_detector("centerface", threads=1), Dlib68(), DlibEmbedder())
    return context_from_table(collect_faces(samples, *models)).bank


def _timed_mean(bank, index: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.process_time()
    texture = bank.mean_face(index)[0]
    return texture, time.process_time() - start


def measure(bank, sets: int, k: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    inner = np.zeros((bank.size, bank.size), np.uint8)
    cv2.fillConvexPoly(inner, cv2.convexHull(bank.shape[17:]).astype(np.int32), 1)
    inner = inner.astype(bool)
    plain_line_up = donor_module.line_up
    kept = {"lined up": [], "plain": []}
    cpu = {"lined up": 0.0, "plain": 0.0}
    for _ in range(sets):
        index = np.sort(rng.choice(len(bank), k, replace=False))
        own = np.mean([_edges(t)[inner].mean() for t in bank.textures[index]])
        for name in kept:
            donor_module.line_up = plain_line_up if name == "lined up" else _unmoved
            try:
                texture, seconds = _timed_mean(bank, index)
            finally:
                donor_module.line_up = plain_line_up
            kept[name].append(_edges(texture)[inner].mean() / own)
            cpu[name] += seconds
    return {
        name: {
            "edge_retention_mean": float(np.mean(v)),
            "edge_retention_p10": float(np.quantile(v, 0.1)),
            "ms_per_mean": 1000 * cpu[name] / sets,
        }
        for name, v in kept.items()
    } | {"gain_share": float(np.mean(np.array(kept["lined up"]) > np.array(kept["plain"])))}


def _unmoved(stack: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return stack


def privacy_over_splits(
    data: Path, attacker: str, splits: int, patch: tuple[object, str], variants: dict
) -> dict:
    """Rank-1 per attack and recognizer over ``splits`` identity splits (eval's
    ``--attack-splits``), for the default surrogate with ``patch`` (a module and the name of
    a function in it) replaced by each of ``variants`` in turn, one key for all:
    {variant: {"attack / recognizer": [rank-1 per split]}}."""
    from faceveil.jobs.evaluate import runner
    from faceveil.jobs.evaluate.config import (
        AttackBudget,
        EvalConfig,
        parse_attacks,
        parse_methods,
    )

    config = EvalConfig(
        images=str(data), identities=str(data / "manifest.csv"), report_dir="",
        methods=parse_methods("surrogate"), attacker_models=(attacker,), utility=False,
        examples=0, progress=False, attacks=parse_attacks("aligned,parrot,inversion"),
        budget=AttackBudget(splits=splits),
    )  # fmt: skip
    session = runner.start_session(config)
    module, name = patch
    kept = getattr(module, name)
    out: dict[str, dict[str, list[float]]] = {}
    try:
        for variant, function in variants.items():
            setattr(module, name, function)
            row = runner.evaluate_method(config.methods[0], session)
            out[variant] = {
                f"{attack} / {recognizer}": [b["rank1"] for b in cell["by_split"]]
                if "by_split" in cell
                else [cell["rank1"]] * splits  # aligned: the same on every split
                for attack, by_recognizer in row["attacks"].items()
                for recognizer, cell in by_recognizer.items()
            }
    finally:
        setattr(module, name, kept)
    return out


def print_over_splits(figures_by_variant: dict, splits: int) -> None:
    """Each variant's rank-1 per attack over the splits: mean, sample SD and every split, and
    the worst against originals per split."""
    for name, figures in figures_by_variant.items():
        print(f"surrogate, {name}: rank-1 over {splits} splits (sample SD)")
        figures["worst vs originals"] = worst_vs_originals(figures)
        for key, values in figures.items():
            spread = " ".join(f"{100 * v:.1f}" for v in values)
            sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
            print(f"   {key:50s} mean {100 * np.mean(values):5.1f}%  sd "
                  f"{100 * sd:4.1f}   {spread}")  # fmt: skip


def worst_vs_originals(figures: dict[str, list[float]]) -> list[float]:
    """Per split, the highest rank-1 of any attack and recognizer whose gallery holds the
    originals (every attack but the parrot's anonymized gallery)."""
    rows = [v for key, v in figures.items() if not key.startswith("parrot_gallery_anonymized")]
    return [max(split) for split in zip(*rows, strict=True)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(shared_root() / "data" / "lfw_dev"))
    p.add_argument("--images", type=int, default=400, help="lfw_dev images for the bank")
    p.add_argument("--sets", type=int, default=100, help="random donor sets per k (0: none)")
    p.add_argument("--splits", type=int, default=0,
                   help="also attack surrogates both ways on this many splits")  # fmt: skip
    p.add_argument("--attacker", default=str(shared_root() / "models" / "mobilefacenet_128d.onnx"))
    args = p.parse_args(argv)
    if missing_shared("bench_line_up", Path(args.data) / "manifest.csv"):
        return 2
    if args.splits:
        variants = {"donors plain": _unmoved, "donors lined up": donor_module.line_up}
        figures = privacy_over_splits(
            Path(args.data), args.attacker, args.splits, (donor_module, "line_up"), variants
        )
        print_over_splits(figures, args.splits)
    if not args.sets:
        return 0
    cv2.setNumThreads(1)
    bank = _bank(Path(args.data), args.images)
    print(f"{bank}, textures {bank.size} px")
    print("k  mean            edge retention (mean, 10th pct)  ms CPU per mean")
    for k in (4, 6):
        result = measure(bank, args.sets, k)
        for name in ("plain", "lined up"):
            r = result[name]
            print(
                f"{k}  {name:<14}  {r['edge_retention_mean']:.3f}, {r['edge_retention_p10']:.3f}"
                f"{'':<20}{r['ms_per_mean']:.1f}"
            )
        print(f"   sets where lining up kept more edges: {result['gain_share']:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
