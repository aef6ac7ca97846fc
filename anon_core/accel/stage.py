"""``AcceleratedStage``: detection and the baseline methods batched on a torch device ('cuda', or
'cpu' to test the same code without a GPU), as a stage of ``FaceAnonymizer``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from faceveil.anon_core.accel.detect import DeviceDetector, padded, use_tensorrt
from faceveil.anon_core.accel.device import nvjpeg_available, onnxruntime_device, torch_device
from faceveil.anon_core.accel.jpeg import DeviceJpeg
from faceveil.anon_core.accel.options import AccelOptions
from faceveil.anon_core.accel.regions import SUPPORTED, TorchRegionMethods
from faceveil.anon_core.detectors import Detector
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.imageio import DecodedImage
from faceveil.anon_core.methods.base import Anonymizer, MethodOutput
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.stage import config_detector, config_method

log = logging.getLogger(__name__)


def _padded(shape: tuple[int, ...]) -> tuple[int, int]:
    return padded(shape[0], shape[1])


class AcceleratedStage:
    """Detection and blur/pixelate/mask of batches on a torch device.

    Images are grouped by their size padded to 32, uploaded once as uint8, detected and
    rewritten there, and copied back. Other methods (such as ``surrogate``) get device
    detection and then the plain per-image method on the host. 'cuda' that cannot be used
    raises RuntimeError here; there is no quiet CPU fallback.
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
        if detector is None:  # onnxruntime on the GPU only where its CUDA provider exists
            detector = config_detector(replace(config, device=onnxruntime_device(config.device)))
        self.detector = detector
        self.device_detector = DeviceDetector(self.detector, self.device, self.options)
        if self.options.tensorrt:
            use_tensorrt(
                self.device_detector, self.options.half, Path(self.options.trt_cache).expanduser()
            )
        self.regions_method: TorchRegionMethods | None = None
        if method is None and config.method in SUPPORTED:
            self.regions_method = TorchRegionMethods(
                config.method, config.method_options, self.device, self.options.half
            )
        self.method: Anonymizer = self.regions_method or method or config_method(config)
        self.codec = DeviceJpeg(self.device) if self.options.nvjpeg else None
        self.workers = self.options.workers or (config.threads if config.threads > 0 else 4)
        log.info("accelerated stage on %s (method %s)", self.device, config.method)

    def decode(self, data: bytes, max_pixels: int) -> DecodedImage | None:
        """A plain JPEG decoded on the device when ``nvjpeg`` is on; None: decode on the CPU."""
        return self.codec.decode_image(data, max_pixels) if self.codec else None

    def encode(self, rgb: np.ndarray, ext: str) -> bytes | None:
        """JPEG output encoded on the device when ``nvjpeg`` is on; None: encode on the CPU."""
        if self.codec is None or ext != "jpg":
            return None
        return self.codec.encode([torch.from_numpy(rgb).to(self.device)])[0]

    def groups(self, shapes: Sequence[tuple[int, ...]]) -> list[list[int]]:
        """Indices grouped by padded size, each group within the pixel budget."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, shape in enumerate(shapes):
            by_size.setdefault(_padded(shape), []).append(i)
        groups = []
        for (ph, pw), members in by_size.items():
            step = max(1, self.options.batch_pixels // (ph * pw))
            groups.extend(members[i : i + step] for i in range(0, len(members), step))
        return groups

    def load(self, images: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
        """The images (host arrays, or H x W x 3 uint8 tensors already on the device) as one
        zero-padded n x H x W x 3 uint8 tensor on the device."""
        ph = max(_padded(image.shape)[0] for image in images)
        pw = max(_padded(image.shape)[1] for image in images)
        if all(isinstance(image, torch.Tensor) for image in images):
            batch = torch.zeros((len(images), ph, pw, 3), dtype=torch.uint8, device=self.device)
            for k, image in enumerate(images):
                batch[k, : image.shape[0], : image.shape[1]] = image
            return batch
        cuda = self.device.type == "cuda"
        host = torch.empty((len(images), ph, pw, 3), dtype=torch.uint8, pin_memory=cuda)
        view = host.numpy()
        for k, image in enumerate(images):
            h, w = image.shape[:2]
            view[k, :h, :w] = image
            view[k, h:] = 0
            view[k, :h, w:] = 0
        return host.to(self.device, non_blocking=True) if cuda else host

    def detect(self, batch: torch.Tensor, images: Sequence[np.ndarray]) -> list[Faces]:
        return self.device_detector(batch, [image.shape[:2] for image in images], images)

    def anonymize(
        self, batch: torch.Tensor, images: Sequence[np.ndarray], faces: Sequence[Faces]
    ) -> list[MethodOutput]:
        """The region method over the device batch, or the host method image by image."""
        method = self.regions_method
        if method is None:
            return [self.method(image, f) for image, f in zip(images, faces, strict=True)]
        regions = [method.regions(f, image.shape) for image, f in zip(images, faces, strict=True)]
        host = self._download(method.apply(batch, regions))
        outputs = []
        for k, image in enumerate(images):
            h, w = image.shape[:2]
            n = len(regions[k])
            pixels = np.ascontiguousarray(host[k, :h, :w])
            outputs.append(MethodOutput(pixels, regions[k], (method.name,) * n, (None,) * n))
        return outputs

    def where(self, step: str) -> str:
        on_device = step == "detect" or (step == "anonymize" and self.regions_method is not None)
        return self.device.type if on_device else ""

    def _download(self, batch: torch.Tensor) -> np.ndarray:
        """The batch back in host memory (through a pinned buffer from a GPU)."""
        if batch.device.type != "cuda":
            return batch.numpy()
        host = torch.empty(batch.shape, dtype=batch.dtype, pin_memory=True)
        return host.copy_(batch).numpy()


def accelerated_anonymizer(
    config: AnonConfig,
    options: AccelOptions | None = None,
    detector: Detector | None = None,
    method: Anonymizer | None = None,
) -> FaceAnonymizer:
    """A ``FaceAnonymizer`` whose stage is an ``AcceleratedStage`` on ``config.device``."""
    return FaceAnonymizer(config, stage=AcceleratedStage(config, options, detector, method))
