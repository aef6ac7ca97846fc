"""The timed runs and the recall check of ``bench/bench_gpu.py`` (issue 16); no Ray.

Each run repeats windows of JPEG bytes until ``--images`` images or ``--seconds`` have passed
(after one untimed warm-up window), while GPU utilisation is sampled and the CUDA allocator's
peak is read.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faceveil.anon_core.accel import AcceleratedStage
from faceveil.anon_core.accel.detect import DeviceDetector, padded
from faceveil.anon_core.accel.jpeg import DeviceJpeg
from faceveil.anon_core.accel.options import AccelOptions
from faceveil.anon_core.detectors import MultiScaleDetector
from faceveil.anon_core.detectors.centerface import CenterFace
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.imageio import DEFAULT_MAX_PIXELS, decode_image, encode_image
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer


@dataclass
class Run:
    """One timed run: what ran, how many images in how long, what the GPU did meanwhile."""

    size: int
    what: str
    path: str
    images: int = 0
    seconds: float = 0.0
    faces: int = -1
    gpu_util: str = "n/a"
    gpu_peak_mib: float = 0.0
    samples: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Budget:
    """How long each run may go: at most ``images`` images or ``seconds`` seconds."""

    images: int
    seconds: float
    batch: int


class GpuUtilSampler:
    """GPU utilisation (%) from ``nvidia-smi -lms 200`` in a thread, when there is one."""

    def __init__(self, enabled: bool) -> None:
        self.samples: list[float] = []
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuUtilSampler:
        if self.enabled:
            index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
            cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            cmd += ["-i", index, "-lms", "200"]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._thread.join(timeout=10)

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()))
            except ValueError:
                continue

    def summary(self) -> str:
        if not self.enabled:
            return "n/a"
        if not self.samples:
            return "no samples"
        return f"{np.mean(self.samples):.0f}% mean, {max(self.samples):.0f}% max"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Run, windows: Sequence, step: Callable, budget: Budget, device: torch.device):
    """``step(window)`` (returns faces found, or -1) over ``windows`` again and again."""
    step(windows[0])  # warm-up: kernels, cuDNN's choice of algorithms, pools
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with GpuUtilSampler(device.type == "cuda") as gpu:
        started = time.perf_counter()
        k = 0
        while run.images < budget.images and (
            k == 0 or time.perf_counter() - started < budget.seconds
        ):
            window = windows[k % len(windows)]
            faces = step(window)
            run.faces = faces if run.faces < 0 else run.faces + faces
            run.images += len(window)
            k += 1
        _sync(device)
        run.seconds = time.perf_counter() - started
    run.gpu_util, run.samples = gpu.summary(), gpu.samples
    if device.type == "cuda":
        run.gpu_peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
    return run


def windows_of(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- the device path ----------------------------------------------------------------------------


def device_pipeline(stage: AcceleratedStage, codec: DeviceJpeg) -> Callable[[list[bytes]], int]:
    """Bytes in, bytes out with the images kept on the device: batched decode, detection and
    blur of each padded-size group, batched encode. Returns a step for ``timed``."""
    method = stage.regions_method

    def step(window: list[bytes]) -> int:
        images = _decoded(codec, window)
        ok = list(range(len(window)))
        faces = 0
        for group in stage.groups([tuple(images[i].shape) for i in ok]):
            tensors = [images[ok[k]] for k in group]
            batch = stage.load(tensors)
            sizes = [tuple(t.shape[:2]) for t in tensors]
            found = stage.device_detector(batch, sizes, [])
            regions = [method.regions(f, (*s, 3)) for f, s in zip(found, sizes, strict=True)]
            method.apply(batch, regions)
            out = codec.encode([batch[k, :h, :w] for k, (h, w) in enumerate(sizes)])
            if len(out) != len(tensors):
                raise RuntimeError("the encoder lost images")
            faces += sum(len(f) for f in found)
        return faces

    return step


def detect_only(stage: AcceleratedStage, images: list[np.ndarray], batch: int):
    """Device batches of the decoded images (uploaded beforehand) and a step detecting in one."""
    batches = []
    for window in windows_of(images, batch):
        sizes = [im.shape[:2] for im in window]
        batches.append((stage.load(window), sizes))

    def step(item) -> int:
        found = stage.device_detector.detect_batch(*item)
        return sum(len(f) for f in found)

    return [[b] * len(b[1]) for b in batches], lambda w: step(w[0])


def _decoded(codec: DeviceJpeg, window: list[bytes]) -> list[torch.Tensor]:
    """The window decoded by the device codec; every lfw_dev JPEG is a plain one, so a refusal
    is a codec failure, reported instead of timed."""
    images = codec.decode(window, DEFAULT_MAX_PIXELS)
    refused = sum(image is None for image in images)
    if refused:
        raise RuntimeError(f"the device codec ({codec.name}) did not decode {refused} JPEGs")
    return images


def codec_step(codec: DeviceJpeg, encode: bool) -> Callable[[list[bytes]], int]:
    def step(window: list[bytes]) -> int:
        images = _decoded(codec, window)
        if encode and len(codec.encode(images)) != len(images):
            raise RuntimeError("the encoder lost images")
        return -1

    return step


def pil_step(pool: ThreadPoolExecutor, encode: bool) -> Callable[[list[bytes]], int]:
    """The CPU codec (``anon_core.imageio``, PIL) on a thread pool."""

    def one(data: bytes) -> None:
        rgb = decode_image(data).rgb
        if encode:
            encode_image(rgb, "jpg")

    def step(window: list[bytes]) -> int:
        list(pool.map(one, window))
        return -1

    return step


def product_step(anon: FaceAnonymizer) -> Callable[[list[bytes]], int]:
    """``FaceAnonymizer.map`` (the job's path: decode and encode overlapped on I/O threads)."""

    def step(window: list[bytes]) -> int:
        faces = 0
        for results in anon.map([window]):
            if not all(r.ok for r in results):
                raise RuntimeError("an image was quarantined")
            faces += sum(len(r.faces) for r in results)
        return faces

    return step


# --- the plain pipeline on every core -------------------------------------------------------------

_CPU: dict = {}


def host_detector(weights: Path | None, threads: int) -> MultiScaleDetector:
    """The CPU path's detector: CenterFace on onnxruntime (CPU), multi-scale as in a job."""
    return MultiScaleDetector(CenterFace(weights, threads=threads))


def _cpu_init(weights: Path | None) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    config = AnonConfig(method="blur", threads=1)
    _CPU["anon"] = FaceAnonymizer(config, detector=host_detector(weights, 1))


def _cpu_ready(_: int) -> int:
    return os.getpid()


def _cpu_window(items: list[bytes]) -> int:
    results = _CPU["anon"].batch(items)
    return sum(len(r.faces) for r in results)


def time_cpu(run: Run, data: list[bytes], budget: Budget, weights: Path | None, procs: int) -> Run:
    """The plain FaceAnonymizer in one single-threaded process per core, warm before timing."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs, _cpu_init, (weights,)) as pool:
        pool.map(_cpu_ready, range(procs * 4), chunksize=1)
        pool.map(_cpu_window, [data[:2]] * procs, chunksize=1)  # warm every worker
        count = min(len(data), budget.images)
        started = time.perf_counter()
        faces = images = 0
        windows = windows_of(data[:count], 4)
        for n, window in zip(pool.imap(_cpu_window, windows), windows, strict=False):
            faces, images = faces + n, images + len(window)
            if time.perf_counter() - started > budget.seconds:
                pool.terminate()
                break
        run.seconds = time.perf_counter() - started
    run.images, run.faces = images, faces
    return run


# --- recall against the CPU path ------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def compare(cpu: list[Faces], device: list[Faces]) -> dict:
    """Recall of the device path against the CPU path's faces (IoU >= 0.5), and differences."""
    matched, shift, differing = 0, 0.0, 0
    for c, d in zip(cpu, device, strict=True):
        differing += len(c) != len(d)
        if len(c) and len(d):
            iou = _iou(c.boxes[:, :4], d.boxes[:, :4])
            best = iou.argmax(axis=1)
            hit = iou.max(axis=1) >= 0.5
            matched += int(hit.sum())
            if hit.any():
                moved = np.abs(c.boxes[hit, :4] - d.boxes[best[hit], :4]).max()
                shift = max(shift, float(moved))
    cpu_faces = sum(len(c) for c in cpu)
    return {
        "images": len(cpu),
        "cpu_faces": cpu_faces,
        "device_faces": sum(len(d) for d in device),
        "recall": matched / cpu_faces if cpu_faces else 1.0,
        "images_with_other_count": differing,
        "max_box_shift_px": shift,
    }


def recall(data: list[bytes], host: MultiScaleDetector, device: torch.device, precisions) -> dict:
    """The CPU onnxruntime path vs the torch device path at each precision, on the same pixels
    (decoded once by the CPU decoder, so only the detectors differ)."""
    images = [decode_image(d).rgb for d in data]
    cpu = [f for w in windows_of(images, 32) for f in host(w)]
    out = {}
    for precision in precisions:
        detector = DeviceDetector(host, device, AccelOptions(precision=precision))
        found = []
        for window in windows_of(images, 64):
            sizes = [im.shape[:2] for im in window]
            found += detector(_padded_batch(window, device), sizes, window)
        out[precision] = compare(cpu, found)
    return out


def _padded_batch(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Same-size images as one zero-padded n x H x W x 3 device batch (sides multiples of 32)."""
    h, w = images[0].shape[:2]
    batch = np.zeros((len(images), *padded(h, w), 3), np.uint8)
    batch[:, :h, :w] = np.stack(images)
    return torch.from_numpy(batch).to(device)
