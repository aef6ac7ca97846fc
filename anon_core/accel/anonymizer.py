"""``AcceleratedAnonymizer``: the FaceAnonymizer contract with detection and the baseline
methods batched on a torch device ('cuda', or 'cpu' to test the same code without a GPU)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from anon_core.accel.detect import DeviceDetector, use_tensorrt
from anon_core.accel.device import nvjpeg_available, torch_device
from anon_core.accel.prefetch import Prefetcher, process_window, safe_decode, safe_finish
from anon_core.accel.regions import SUPPORTED, TorchRegionMethods
from anon_core.detectors import Detector
from anon_core.faces import Faces
from anon_core.imageio import DecodedImage, encode_image
from anon_core.methods.base import Anonymizer, MethodOutput
from anon_core.pipeline import AnonConfig, AnonResult, FaceAnonymizer, quarantined
from anon_core.runtime import INFERENCE_ERRORS

log = logging.getLogger(__name__)

DEVICE_ERRORS = INFERENCE_ERRORS  # torch and onnxruntime failures of a device batch


@dataclass(frozen=True)
class AccelOptions:
    """How the accelerated path runs; the device itself is ``AnonConfig.device``.

    ``half``: float16 products in the region methods and TensorRT fp16 (CUDA only).
    ``tensorrt``: detector on onnxruntime's TensorRT provider, engines cached in ``trt_cache``.
    ``nvjpeg``: decode plain RGB JPEGs on the GPU (needs torchvision with CUDA).
    ``workers``: decode/encode threads (0: ``AnonConfig.threads``, or 4 when that is 0).
    ``batch_pixels``: padded pixels per device batch (2**24 is 64 images of 512 x 512).
    """

    half: bool = False
    tensorrt: bool = False
    trt_cache: str = "~/.cache/faceveil/tensorrt"
    nvjpeg: bool = False
    workers: int = 0
    batch_pixels: int = 1 << 24


@dataclass
class Staged:
    """One image after the device stage, waiting to be encoded."""

    image: DecodedImage
    faces: Faces
    output: MethodOutput


class AcceleratedAnonymizer(FaceAnonymizer):
    """FaceAnonymizer whose batches run detection and blur/pixelate/mask on a torch device.

    Images are grouped by their size padded to 32 (the detector's own padding), uploaded once
    as uint8, detected and rewritten there, and copied back for encoding. Other methods (such
    as ``surrogate``) get device detection and then the plain per-image method. Results are the
    same AnonResult objects; decode and encode are anon_core.imageio's. ``decode``, ``process``
    and ``finish`` are the three stages ``Prefetcher`` overlaps; ``map`` runs them pipelined.
    'cuda' that cannot be used raises RuntimeError here; there is no quiet CPU fallback.
    """

    def __init__(
        self,
        config: AnonConfig,
        options: AccelOptions | None = None,
        detector: Detector | None = None,
        method: Anonymizer | None = None,
    ) -> None:
        self.options = options or AccelOptions()
        self.device = torch_device(config.device)
        if self.device.type != "cuda" and (self.options.tensorrt or self.options.nvjpeg):
            raise ValueError("tensorrt and nvjpeg need device 'cuda'")
        if self.options.nvjpeg and not nvjpeg_available():
            raise RuntimeError("nvjpeg requested but torchvision with CUDA is not importable")
        super().__init__(config, detector, method)
        self.device_detector = DeviceDetector(self.detector, self.device)
        if self.options.tensorrt:
            use_tensorrt(
                self.device_detector, self.options.half, Path(self.options.trt_cache).expanduser()
            )
        self.regions_method: TorchRegionMethods | None = None
        if method is None and config.method in SUPPORTED:
            self.regions_method = TorchRegionMethods(
                config.method, config.method_options, self.device, self.options.half
            )
            self.method = self.regions_method
        self.workers = self.options.workers or (config.threads if config.threads > 0 else 4)
        self._pool: ThreadPoolExecutor | None = None
        log.info("accelerated anonymizer on %s (method %s)", self.device, config.method)

    def pool(self) -> ThreadPoolExecutor:
        """The decode/encode thread pool, started on first use."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="faceveil-io")
        return self._pool

    def close(self) -> None:
        """Stop the thread pool (a later call starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def batch(self, images: Sequence[bytes | np.ndarray]) -> list[AnonResult]:
        pool = self.pool()
        decoded = list(pool.map(lambda item: safe_decode(self, item), images))
        staged = process_window(self, decoded)
        return list(pool.map(lambda item: safe_finish(self, item), staged))

    def map(self, windows: Iterable[Sequence[bytes | np.ndarray]]) -> Iterator[list[AnonResult]]:
        """Results per window, decode and encode overlapped with the device (see Prefetcher)."""
        yield from Prefetcher(self, pool=self.pool()).map(windows)

    def decode(self, item: bytes | np.ndarray) -> DecodedImage | AnonResult:
        """Stage 1 (CPU thread): bytes or an RGB array to pixels, or a quarantined result."""
        if self.options.nvjpeg and isinstance(item, bytes):
            from anon_core.accel.jpeg import gpu_decode

            decoded = gpu_decode(item, self.config.max_pixels, self.device)
            if decoded is not None:
                return decoded
        return self._decode(item)

    def process(self, decoded: Sequence[DecodedImage | AnonResult]) -> list[Staged | AnonResult]:
        """Stage 2 (device): detect and anonymize every decoded image, in batches by size."""
        out: list[Staged | AnonResult] = [d for d in decoded]
        for group in self._groups(decoded):
            for i, result in zip(group, self._run([decoded[i] for i in group]), strict=True):
                out[i] = result
        return out

    def finish(self, staged: Staged | AnonResult) -> AnonResult:
        """Stage 3 (CPU thread): encode, with no metadata, in the input's format."""
        if isinstance(staged, AnonResult):
            return staged
        ext = staged.image.output_ext
        encoded = encode_image(staged.output.image, ext)
        status = "anonymized" if len(staged.faces) else "no_face"
        return AnonResult(status, "", "", encoded, ext, staged.faces, staged.output, staged.image)

    def _groups(self, decoded: Sequence[DecodedImage | AnonResult]) -> list[list[int]]:
        """Indices of decoded images grouped by padded size, each within the pixel budget."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, d in enumerate(decoded):
            if isinstance(d, DecodedImage):
                h, w = d.rgb.shape[:2]
                by_size.setdefault((-(-h // 32) * 32, -(-w // 32) * 32), []).append(i)
        groups = []
        for (ph, pw), members in by_size.items():
            step = max(1, self.options.batch_pixels // (ph * pw))
            groups.extend(members[i : i + step] for i in range(0, len(members), step))
        return groups

    def _run(self, images: list[DecodedImage]) -> list[Staged | AnonResult]:
        """One device batch; a failing batch is retried image by image, then quarantined."""
        stage = "detect"
        try:
            batch = self._upload(images)
            found = self.device_detector(batch, [d.rgb.shape[:2] for d in images],
                                         [d.rgb for d in images])  # fmt: skip
            if self.regions_method is None:
                del batch
                return self._host_method(images, found)
            stage = "anonymize"
            return self._rewrite(images, batch, found)
        except DEVICE_ERRORS as exc:
            log.warning("device %s failed on %d images: %s", stage, len(images), type(exc).__name__)
            if len(images) > 1:
                return [r for d in images for r in self._run([d])]
            name = "detector" if stage == "detect" else self.config.method
            return [
                quarantined(stage, f"{name} failed on {self.device.type} ({type(exc).__name__})")
            ]

    def _host_method(self, images: list[DecodedImage], found: list[Faces]) -> list[AnonResult]:
        """A method without a device version (``surrogate``): the plain per-image path.

        The pipeline's batched face stage (landmarks, embeddings), once it has one under the name
        ``prepare_faces(rgb_images, faces) -> faces``, runs first, exactly as in the plain path.
        """
        prepare = getattr(self, "prepare_faces", None)
        if prepare is not None:
            found = prepare([d.rgb for d in images], found)
        return [self._anonymize(d, f) for d, f in zip(images, found, strict=True)]

    def _upload(self, images: list[DecodedImage]) -> torch.Tensor:
        """The images as one zero-padded n x H x W x 3 uint8 tensor on the device."""
        ph = max(-(-d.rgb.shape[0] // 32) * 32 for d in images)
        pw = max(-(-d.rgb.shape[1] // 32) * 32 for d in images)
        cuda = self.device.type == "cuda"
        host = torch.empty((len(images), ph, pw, 3), dtype=torch.uint8, pin_memory=cuda)
        view = host.numpy()
        for k, d in enumerate(images):
            h, w = d.rgb.shape[:2]
            view[k, :h, :w] = d.rgb
            view[k, h:] = 0
            view[k, :h, w:] = 0
        return host.to(self.device, non_blocking=True) if cuda else host

    def _download(self, batch: torch.Tensor) -> np.ndarray:
        """The batch back in host memory (through a pinned buffer from a GPU)."""
        if batch.device.type != "cuda":
            return batch.numpy()
        host = torch.empty(batch.shape, dtype=batch.dtype, pin_memory=True)
        return host.copy_(batch).numpy()

    def _rewrite(
        self, images: list[DecodedImage], batch: torch.Tensor, found: list[Faces]
    ) -> list[Staged]:
        method = self.regions_method
        regions = [method.regions(f, d.rgb.shape) for d, f in zip(images, found, strict=True)]
        host = self._download(method.apply(batch, regions))
        staged = []
        for k, (d, faces) in enumerate(zip(images, found, strict=True)):
            h, w = d.rgb.shape[:2]
            n = len(regions[k])
            output = MethodOutput(
                np.ascontiguousarray(host[k, :h, :w]), regions[k], (method.name,) * n, (None,) * n
            )
            staged.append(Staged(d, faces, output))
        return staged
