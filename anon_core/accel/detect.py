"""Face detection on device tensors: CenterFace run by torch (or onnxruntime I/O binding), the
multi-scale passes of large images resized, tiled and batched on the device too.

The plain detector builds a float32 N x 3 x H x W blob on the CPU; here the blob is made from
the uint8 images already on the device, the network's outputs stay there, and only the few
above-threshold points come back to the host, where they are decoded by the CPU detector's own
``centerface.decode_points``. Large images follow ``MultiScaleDetector.views`` (the same passes
as the CPU): each is area-resized on the device with OpenCV's INTER_AREA weights, cut into its
tiles, and the views of one padded size are detected in one batch. Detectors other than
CenterFace go through their own (host) batching.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from faceveil.anon_core.accel.options import AccelOptions
from faceveil.anon_core.accel.regions import area_weights
from faceveil.anon_core.accel.torchnet import TorchCenterFace
from faceveil.anon_core.detectors import Detector, MultiScaleDetector
from faceveil.anon_core.detectors import centerface as cf
from faceveil.anon_core.detectors.base import View, scaled_size
from faceveil.anon_core.faces import Faces
from faceveil.anon_core.runtime import providers_for

log = logging.getLogger(__name__)

_CHANNELS = (1, 2, 2, 10)  # heatmap, log-scale, offset, landmarks
_PAD = 32


def padded(h: int, w: int) -> tuple[int, int]:
    """The detector's input size for an h x w image (each side up to a multiple of 32)."""
    return -(-h // _PAD) * _PAD, -(-w // _PAD) * _PAD


def area_resize(image: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """An H x W x 3 uint8 device image shrunk to h x w like ``cv2.resize(..., INTER_AREA)``."""
    src_h, src_w = image.shape[:2]
    if (src_h, src_w) == (h, w):
        return image
    shrink = h <= src_h and w <= src_w
    rows = torch.from_numpy(area_weights(src_h, h, shrink)).float().to(image.device)
    cols = torch.from_numpy(area_weights(src_w, w, shrink)).float().to(image.device)
    x = image.permute(2, 0, 1).float()
    y = rows @ x @ cols.T
    return torch.round(y).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)


class _OrtRunner:
    """CenterFace on the detector's own onnxruntime session, input and outputs bound to device
    memory (the option for onnxruntime-gpu installs)."""

    def __init__(self, session: ort.InferenceSession, device: torch.device) -> None:
        if device.type == "cuda":
            providers_for("cuda")  # raises when onnxruntime has no CUDAExecutionProvider
        self.session = session

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        blob = batch.permute(0, 3, 1, 2).float().contiguous()
        n, _, ph, pw = blob.shape
        kind, index = ("cuda" if blob.is_cuda else "cpu"), blob.device.index or 0
        shape = (n, 1, ph // cf.STRIDE, pw // cf.STRIDE)
        outs = [blob.new_empty(shape[:1] + (c,) + shape[2:]) for c in _CHANNELS]
        binding = self.session.io_binding()
        binding.bind_input(cf._INPUT, kind, index, np.float32, tuple(blob.shape), blob.data_ptr())
        for name, out in zip(cf._OUTPUTS, outs, strict=True):
            binding.bind_output(name, kind, index, np.float32, tuple(out.shape), out.data_ptr())
        if blob.is_cuda:
            torch.cuda.current_stream(blob.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outs


class DeviceDetector:
    """Detects faces in a device batch (n x H x W x 3 uint8, H and W multiples of 32).

    ``detector`` is the pipeline's detector: its CenterFace threshold, NMS and weights (and,
    for backend 'onnxruntime', its session) are reused, and its multi-scale settings decide
    which images get the tiled passes. ``__call__`` takes the batch, each image's true (h, w)
    and its host pixels (used only by detectors without a device path).
    """

    def __init__(self, detector: Detector, device: torch.device, options: AccelOptions) -> None:
        self.detector = detector
        self.device = device
        self.multi = detector if isinstance(detector, MultiScaleDetector) else None
        base = self.multi.base if self.multi else detector
        self.base = base if isinstance(base, cf.CenterFace) else None
        self.run = None
        if self.base is None:
            log.info("detector %s has no device path; using its own batching", detector.name)
        elif options.backend == "torch":
            self.run = TorchCenterFace(self.base.model_path, device, options.precision)
        else:
            self.run = _OrtRunner(self.base.session, device)

    def __call__(
        self, batch: torch.Tensor, sizes: Sequence[tuple[int, int]], host: Sequence[np.ndarray]
    ) -> list[Faces]:
        if self.run is None:
            return self.detector(list(host))
        large = [self.multi is not None and max(s) > self.multi.max_side for s in sizes]
        if not any(large):
            return self.detect_batch(batch, sizes)
        results: list[Faces] = [Faces.empty()] * len(sizes)
        small = [i for i, big in enumerate(large) if not big]
        if small:
            found = self.detect_batch(batch[small], [sizes[i] for i in small])
            for i, faces in zip(small, found, strict=True):
                results[i] = faces
        for i in (i for i, big in enumerate(large) if big):
            h, w = sizes[i]
            results[i] = self.multiscale(batch[i, :h, :w])
        return results

    def detect_batch(self, batch: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[Faces]:
        """Faces in each image of one padded batch (image i in the top-left h x w corner)."""
        heat, scale, offset, marks = self.run(batch)
        mask = heat[:, 0] > self.base.threshold
        b, ys, xs = mask.nonzero(as_tuple=True)
        values = torch.cat(
            [heat[b, 0, ys, xs][:, None], scale[b, :, ys, xs], offset[b, :, ys, xs],
             marks[b, :, ys, xs]], dim=1,
        )  # fmt: skip
        where = torch.stack([b, ys, xs], dim=1).cpu().numpy()
        values = values.cpu().numpy()
        return [
            self._decode(where[where[:, 0] == i, 1:], values[where[:, 0] == i], h, w)
            for i, (h, w) in enumerate(sizes)
        ]

    def detect_views(self, views: Sequence[torch.Tensor]) -> list[Faces]:
        """Faces in each h x w x 3 device image; images of one padded size share a batch."""
        groups: dict[tuple[int, int], list[int]] = {}
        for k, view in enumerate(views):
            groups.setdefault(padded(*view.shape[:2]), []).append(k)
        found: list[Faces] = [Faces.empty()] * len(views)
        for (ph, pw), members in groups.items():
            batch = views[members[0]].new_zeros((len(members), ph, pw, 3))
            for row, k in enumerate(members):
                h, w = views[k].shape[:2]
                batch[row, :h, :w] = views[k]
            sizes = [tuple(views[k].shape[:2]) for k in members]
            for k, faces in zip(members, self.detect_batch(batch, sizes), strict=True):
                found[k] = faces
        return found

    def multiscale(self, image: torch.Tensor) -> Faces:
        """One large h x w x 3 device image through the multi-scale detector's views."""
        h, w = image.shape[:2]
        plan: list[View] = self.multi.views(h, w)
        scales = {v.scale for v in plan}
        resized = {s: area_resize(image, *scaled_size(h, w, s)) for s in scales}
        crops = [resized[v.scale][v.box[1] : v.box[3], v.box[0] : v.box[2]] for v in plan]
        found = self.detect_views(crops)
        return self.multi.merge([v.place(f) for v, f in zip(plan, found, strict=True)])

    def _decode(self, where: np.ndarray, values: np.ndarray, h: int, w: int) -> Faces:
        """One image's gathered cells (rows of y, x and 15 map values) through the shared decode."""
        ys, xs, v = where[:, 0], where[:, 1], values.T
        maps = cf.CenterFaceMaps(v[0], v[1:3], v[3:5], v[5:])
        return cf.decode_points(ys, xs, maps, (h, w), self.base.nms_threshold)


def use_tensorrt(detector: DeviceDetector, half: bool, cache_dir: str | Path) -> None:
    """Rebuild the detector's onnxruntime session on TensorRT (engines cached in ``cache_dir``).

    Raises RuntimeError when onnxruntime here has no TensorrtExecutionProvider or the detector
    is not CenterFace on backend 'onnxruntime'; never falls back quietly.
    """
    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in available:
        raise RuntimeError(
            f"TensorRT requested but onnxruntime has no TensorrtExecutionProvider ({available})"
        )
    if detector.base is None or not isinstance(detector.run, _OrtRunner):
        raise RuntimeError("TensorRT is only wired for the centerface detector on onnxruntime")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    trt = {
        "device_id": detector.device.index or 0,
        "trt_fp16_enable": half,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
    }
    providers = [
        ("TensorrtExecutionProvider", trt),
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    model = cf._dynamic_model(detector.base.model_path)
    session = ort.InferenceSession(model, providers=providers)
    detector.base.session = detector.run.session = session
    log.info("detector session on %s", session.get_providers()[0])
