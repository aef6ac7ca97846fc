"""Issue 7's benchmark: the accelerated (GPU) path vs the plain CPU pipeline on the same machine.

On a GPU node: ``python bench/bench_gpu.py --device cuda --images 4000``. Smoke run anywhere:
``python bench/bench_gpu.py --device cpu --images 40``. Prints images/s for detect+blur and
for surrogate (when that method is registered) on synthetic replicas of lfw_dev at 512 x 512
(upscaled) and 250 x 250, the GPU utilisation while timing, the same work on this machine's
CPUs (one plain pipeline per core), and recall on lfw_dev for the plain and accelerated paths.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make ``bench`` importable like ``-m``
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench.common import (  # noqa: E402
    format_table,
    lfw_images,
    machine_info,
    source_images,
    versions,
)
from faceveil.anon_core import methods  # noqa: E402
from faceveil.anon_core.accel import AccelOptions, accelerated_anonymizer, describe  # noqa: E402
from faceveil.anon_core.detectors import build_detector  # noqa: E402
from faceveil.anon_core.imageio import DecodedImage  # noqa: E402
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer  # noqa: E402

TARGETS = {("blur", 512): 1500.0, ("surrogate", 512): 300.0}  # images/s on one H100
ROWS = {"blur": "detect+blur", "surrogate": "surrogate"}
DISTRIBUTIONS = ("torch", "torchvision", "onnxruntime", "onnxruntime-gpu", "opencv-python-headless")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/bench_gpu.py", description=__doc__)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--images", type=int, default=4000, help="images per timed run")
    p.add_argument("--batch-size", type=int, default=64, help="images per window")
    p.add_argument("--sizes", default="512,250", help="square sides, comma-separated")
    p.add_argument("--workers", type=int, default=0, help="decode/encode threads (0: cores)")
    p.add_argument("--cpu-procs", type=int, default=0, help="plain CPU processes (0: cores)")
    p.add_argument("--half", action="store_true", help="fp16 region methods (CUDA)")
    p.add_argument("--tensorrt", action="store_true", help="detector on TensorRT")
    p.add_argument("--nvjpeg", action="store_true", help="decode JPEGs on the GPU")
    p.add_argument("--no-cpu", action="store_true", help="skip the plain CPU comparison")
    p.add_argument("--recall-images", type=int, default=0, help="lfw_dev images (0: all)")
    p.add_argument("--source", type=Path, default=lfw_images(), help="folder of images")
    p.add_argument("--json", type=Path, help="also write every raw figure here")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.images < 1 or args.batch_size < 1 or not args.sizes:
        p.error("--images and --batch-size must be positive; --sizes must name a size")
    cores = len(os.sched_getaffinity(0))
    args.workers = args.workers or cores
    args.cpu_procs = args.cpu_procs or cores
    return args


# --- data -------------------------------------------------------------------------------------


def synthetic(sources: list[Path], count: int, side: int) -> list[bytes]:
    """``count`` JPEGs cycling over ``sources``, each resized to side x side (bytes repeat)."""
    unique = []
    for path in sources[: min(len(sources), count)]:
        data = path.read_bytes()
        img = Image.open(io.BytesIO(data)).convert("RGB")
        if img.size != (side, side):
            buf = io.BytesIO()
            img.resize((side, side), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=95)
            data = buf.getvalue()
        unique.append(data)
    return [unique[i % len(unique)] for i in range(count)]


def windows(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- GPU utilisation --------------------------------------------------------------------------


class GpuUtilSampler:
    """Samples GPU utilisation (%) every 0.2 s in a thread: nvidia-smi, else pynvml, else none."""

    def __init__(self, enabled: bool) -> None:
        self.samples: list[float] = []
        self.source = "n/a (device cpu)" if not enabled else self._pick()
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _pick() -> str:
        if shutil.which("nvidia-smi"):
            return "nvidia-smi"
        try:
            import pynvml  # noqa: F401
        except ImportError:
            return "n/a (no nvidia-smi, no pynvml)"
        return "pynvml"

    @staticmethod
    def _gpu_index() -> str:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        return visible or "0"

    def __enter__(self) -> GpuUtilSampler:
        if self.source == "nvidia-smi":
            cmd = [
                "nvidia-smi",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                "-i",
                self._gpu_index(),
                "-lms",
                "200",
            ]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        elif self.source == "pynvml":
            self._thread = threading.Thread(target=self._poll_nvml, daemon=True)
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._thread:
            self._thread.join(timeout=10)

    def _read_smi(self) -> None:
        for line in self._proc.stdout:
            if self._stop.is_set():
                break
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                continue

    def _poll_nvml(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(self._gpu_index()))
        while not self._stop.wait(0.2):
            self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        pynvml.nvmlShutdown()

    def summary(self) -> str:
        if not self.samples:
            return self.source if self.source.startswith("n/a") else "no samples"
        return f"{np.mean(self.samples):.0f}% mean, {max(self.samples):.0f}% max"


# --- timed runs -------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed run: what ran, how fast, what it found."""

    size: int
    method: str
    path: str
    images: int = 0
    seconds: float = 0.0
    faces: int = 0
    quarantined: int = 0
    gpu_util: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def build_accelerated(
    method: str, args: argparse.Namespace, method_options: dict | None = None
) -> FaceAnonymizer:
    options = AccelOptions(
        half=args.half, tensorrt=args.tensorrt, nvjpeg=args.nvjpeg, workers=args.workers
    )
    threads = 1 if args.device == "cuda" else 0  # onnxruntime's CPU threads idle on a GPU
    config = AnonConfig(method, method_options or {}, device=args.device, threads=threads)
    return accelerated_anonymizer(config, options)


def time_end_to_end(anon: FaceAnonymizer, data: list[bytes], run: Run, args) -> Run:
    """Bytes in, encoded bytes out, decode and encode overlapped on threads (Prefetcher)."""
    for _ in anon.map(windows(data[: args.batch_size], args.batch_size)):
        pass  # warm-up: models, kernels, pinned buffers
    with GpuUtilSampler(args.device == "cuda") as gpu:
        started = time.perf_counter()
        for results in anon.map(windows(data, args.batch_size)):
            run.faces += sum(len(r.faces) for r in results)
            run.quarantined += sum(not r.ok for r in results)
            run.images += len(results)
        run.seconds = time.perf_counter() - started
    run.gpu_util, run.samples = gpu.summary(), gpu.samples
    return run


def time_device_stage(anon: FaceAnonymizer, data: list[bytes], run: Run, args) -> Run:
    """Only the device stage (detect + method), on images decoded beforehand."""
    decoded = list(anon.pool().map(anon.decode, data))
    ready = [d for d in decoded if isinstance(d, DecodedImage)]
    anon.process(ready[: args.batch_size])
    with GpuUtilSampler(args.device == "cuda") as gpu:
        started = time.perf_counter()
        for window in windows(ready, args.batch_size):
            staged = anon.process(window)
            run.faces += sum(len(s.faces) for s in staged)
            run.images += len(window)
        if args.device == "cuda":
            import torch

            torch.cuda.synchronize()
        run.seconds = time.perf_counter() - started
    run.quarantined = len(decoded) - len(ready)
    run.gpu_util, run.samples = gpu.summary(), gpu.samples
    return run


# --- the plain pipeline on every core ---------------------------------------------------------

_CPU: dict = {}


def _cpu_init(method: str, options: dict, barrier) -> None:
    import cv2

    cv2.setNumThreads(1)
    if method == "surrogate":
        importlib.import_module("faceveil.anon_core.methods.surrogate")
    _CPU["anon"] = FaceAnonymizer(AnonConfig(method, options, threads=1))
    _CPU["barrier"] = barrier


def _cpu_ready(_: int) -> None:
    _CPU["barrier"].wait(timeout=900)


def _cpu_window(items: list[bytes]) -> tuple[int, int, int]:
    results = _CPU["anon"].batch(items)
    return len(results), sum(len(r.faces) for r in results), sum(not r.ok for r in results)


def time_cpu(method: str, options: dict, data: list[bytes], run: Run, args) -> Run:
    """The plain FaceAnonymizer in one single-threaded process per core, warm before timing."""
    ctx = mp.get_context("spawn")
    procs = args.cpu_procs
    with ctx.Pool(procs, _cpu_init, (method, options, ctx.Barrier(procs))) as pool:
        pool.map(_cpu_ready, range(procs), chunksize=1)
        started = time.perf_counter()
        for n, faces, bad in pool.imap_unordered(_cpu_window, windows(data, 4)):
            run.images, run.faces, run.quarantined = (
                run.images + n,
                run.faces + faces,
                run.quarantined + bad,
            )
        run.seconds = time.perf_counter() - started
    run.gpu_util = "n/a (CPU only)"
    return run


# --- recall -----------------------------------------------------------------------------------


def recall(sources: list[Path], accel: FaceAnonymizer, batch: int) -> dict:
    """Faces found on lfw_dev by the plain CPU path and by the accelerated path, side by side."""
    data = [p.read_bytes() for p in sources]
    plain = FaceAnonymizer(AnonConfig(method="blur"), detector=accel.detector)
    cpu = [r for w in windows(data, batch) for r in plain.batch(w)]
    acc = [r for w in accel.map(windows(data, batch)) for r in w]
    figures = {}
    for name, results in (
        ("plain CPU path", cpu),
        (f"accelerated ({accel.stage.device.type})", acc),
    ):
        figures[name] = {
            "images": len(results),
            "with_face": sum(len(r.faces) > 0 for r in results),
            "faces": sum(len(r.faces) for r in results),
        }
    same = [len(a.faces) == len(b.faces) for a, b in zip(cpu, acc, strict=True)]
    shifts = [
        float(np.abs(a.faces.boxes[:, :4] - b.faces.boxes[:, :4]).max())
        for a, b, ok in zip(cpu, acc, same, strict=True)
        if ok and len(a.faces)
    ]
    figures["differing_images"] = same.count(False)
    figures["max_box_shift_px"] = max(shifts, default=0.0)
    return figures


# --- report -----------------------------------------------------------------------------------


def surrogate_options(sources: list[Path]) -> tuple[dict, str]:
    """Options for a working surrogate (first pass over lfw_dev), or ({}, why it is skipped).

    The surrogate needs a key, a context from a first pass (dlib landmarks and embeddings) and
    a pipeline that fills landmarks68 and embeddings before the method; a probe image checks
    that faces really get surrogates rather than a fallback or quarantine.
    """
    try:
        importlib.import_module("faceveil.anon_core.methods.surrogate")
        from faceveil.anon_core.embeddings import DlibEmbedder
        from faceveil.anon_core.landmarks import Dlib68
        from faceveil.anon_core.surrogate.context import build_surrogate_context
    except ImportError as exc:
        return {}, f"the surrogate method is not importable ({exc})"
    if "surrogate" not in methods.available():
        return {}, f"method 'surrogate' is not registered (have {methods.available()})"
    picks = sources[:: max(1, len(sources) // 64)][:64]
    samples = ((f"s{i}", np.asarray(Image.open(p).convert("RGB"))) for i, p in enumerate(picks))
    try:
        context = build_surrogate_context(
            samples, build_detector("centerface"), Dlib68(), DlibEmbedder()
        )
        options = {"key": b"faceveil-bench-key-0", "context": context}
        probe = FaceAnonymizer(AnonConfig(method="surrogate", method_options=options))
        result = probe(picks[0].read_bytes())
    except (ValueError, RuntimeError, TypeError, FileNotFoundError, OSError) as exc:
        return {}, f"the surrogate cannot be built here ({type(exc).__name__}: {exc})"
    used = result.output.methods if result.ok and result.output else ()
    if "surrogate" not in used:
        why = result.reason or f"faces got {used or 'nothing'}"
        return {}, f"the pipeline does not yet produce surrogates ({result.status}: {why})"
    return options, ""


def target_note(run: Run, device: str) -> str:
    target = TARGETS.get((run.method, run.size))
    if target is None or not run.path.startswith("accelerated, end to end"):
        return ""
    if device != "cuda":
        return f"target >= {target:,.0f}/s is for --device cuda on one H100"
    return f"{'MET' if run.rate >= target else 'MISSED'} (target >= {target:,.0f}/s)"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.4f}" if b else "n/a"


RUN_HEADERS = ("size", "pipeline", "path", "images", "images/s", "faces", "quarantined",
               "GPU utilisation", "target")  # fmt: skip
RECALL_HEADERS = ("path", "images", "images with a face", "faces",
                  "recall (images with a face / images)", "faces / images")  # fmt: skip


def throughput_table(runs: list[Run], skipped: dict[str, str], device: str) -> list[str]:
    rows = [
        (f"{r.size}x{r.size}", ROWS[r.method], r.path, r.images, f"{r.rate:,.1f}", r.faces,
         r.quarantined, r.gpu_util, target_note(r, device))
        for r in runs
    ]  # fmt: skip
    lines = ["throughput:", format_table(RUN_HEADERS, rows)]
    return lines + [f"{ROWS[m]}: skipped, {why}" for m, why in skipped.items()]


def recall_table(rec: dict) -> list[str]:
    rows = [
        (name, f["images"], f["with_face"], f["faces"], _ratio(f["with_face"], f["images"]),
         _ratio(f["faces"], f["images"]))
        for name, f in rec.items() if isinstance(f, dict)
    ]  # fmt: skip
    return [
        "recall on lfw_dev (native 250 x 250):",
        format_table(RECALL_HEADERS, rows),
        f"images whose face count differs: {rec['differing_images']}; largest box shift where "
        f"counts agree: {rec['max_box_shift_px']:.3f} px",
    ]


def run_size(side: int, method: str, options: dict, sources: list[Path], args) -> list[Run]:
    data = synthetic(sources, args.images, side)
    anon = build_accelerated(method, args, options)
    try:
        path = f"accelerated, end to end ({args.device}, {anon.stage.workers} I/O threads)"
        runs = [time_end_to_end(anon, data, Run(side, method, path), args)]
        path = f"accelerated, device stage only ({args.device}, pre-decoded)"
        runs.append(time_device_stage(anon, data, Run(side, method, path), args))
    finally:
        anon.close()
    if not args.no_cpu:
        path = f"plain CPU pipeline, {args.cpu_procs} processes x 1 thread"
        runs.append(time_cpu(method, options, data, Run(side, method, path), args))
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sources = source_images(args.source)
    print("machine:", json.dumps(machine_info()))
    print("accelerator:", json.dumps(describe()))
    print("versions:", json.dumps(versions(DISTRIBUTIONS)))
    print(f"images per run: {args.images}, window {args.batch_size}, source {len(sources)} files")
    runs, skipped = [], {}
    for method in ROWS:
        options, why = ({}, "") if method == "blur" else surrogate_options(sources)
        if why:
            skipped[method] = why
            continue
        for side in args.sizes:
            runs += run_size(side, method, options, sources, args)
    accel = build_accelerated("blur", args)
    rec = recall(sources[: args.recall_images or None], accel, args.batch_size)
    accel.close()
    print("\n".join([*throughput_table(runs, skipped, args.device), "", *recall_table(rec)]))
    if args.json:
        raw = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "recall": rec,
            "skipped": skipped,
            "runs": [asdict(r) | {"rate": r.rate} for r in runs],
        }
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
