"""Face detection on device tensors: CenterFace fed and read through onnxruntime I/O binding.

The plain detector builds a float32 N x 3 x H x W blob on the CPU and copies it to the
accelerator; here the blob is made from the uint8 images already on the device, the network's
outputs stay there, and only the few above-threshold points come back to the host, where they
are decoded by the CPU detector's own ``centerface.decode_points``.
Images larger than the multi-scale detector's ``max_side`` (and any detector other than
CenterFace) go through the plain detector, on the same onnxruntime session.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from faceveil.anon_core.detectors import Detector, MultiScaleDetector
from faceveil.anon_core.detectors import centerface as cf
from faceveil.anon_core.faces import Faces

log = logging.getLogger(__name__)

_CHANNELS = (1, 2, 2, 10)  # heatmap, log-scale, offset, landmarks


class DeviceDetector:
    """Detects faces in a device batch (n x H x W x 3 uint8, H and W multiples of 32).

    ``detector`` is the pipeline's detector; its CenterFace session is reused. ``__call__``
    takes the batch and each image's true (h, w) plus its host pixels for the plain path.
    """

    def __init__(self, detector: Detector, device: torch.device) -> None:
        self.detector = detector
        self.device = device
        base = detector.base if isinstance(detector, MultiScaleDetector) else detector
        self.max_side = detector.max_side if isinstance(detector, MultiScaleDetector) else 0
        self.base = base if isinstance(base, cf.CenterFace) else None
        if self.base is None:
            log.info("detector %s has no device path; using its own batching", detector.name)

    def on_device(self, h: int, w: int) -> bool:
        """Whether an h x w image is detected from the device tensor."""
        return self.base is not None and max(h, w) <= self.max_side

    def __call__(
        self, batch: torch.Tensor, sizes: Sequence[tuple[int, int]], host: Sequence[np.ndarray]
    ) -> list[Faces]:
        if not all(self.on_device(h, w) for h, w in sizes):
            return self.detector(list(host))
        blob = batch.permute(0, 3, 1, 2).float().contiguous()
        heat, scale, offset, marks = self._run(blob)
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

    def _decode(self, where: np.ndarray, values: np.ndarray, h: int, w: int) -> Faces:
        """One image's gathered cells (rows of y, x and 15 map values) through the shared decode."""
        ys, xs, v = where[:, 0], where[:, 1], values.T
        return cf.decode_points(ys, xs, v[0], v[1:3], v[3:5], v[5:], h, w, self.base.nms_threshold)

    def _run(self, blob: torch.Tensor) -> list[torch.Tensor]:
        """Run the network with its input and outputs bound to device memory."""
        n, _, ph, pw = blob.shape
        kind = "cuda" if blob.is_cuda else "cpu"
        index = blob.device.index or 0
        outs = [
            torch.empty(
                (n, c, ph // cf.STRIDE, pw // cf.STRIDE), dtype=torch.float32, device=blob.device
            )
            for c in _CHANNELS
        ]
        binding = self.base.session.io_binding()
        binding.bind_input(cf._INPUT, kind, index, np.float32, tuple(blob.shape), blob.data_ptr())
        for name, out in zip(cf._OUTPUTS, outs, strict=True):
            binding.bind_output(name, kind, index, np.float32, tuple(out.shape), out.data_ptr())
        if blob.is_cuda:
            torch.cuda.current_stream(blob.device).synchronize()
        self.base.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outs


def use_tensorrt(detector: DeviceDetector, half: bool, cache_dir: str | Path) -> None:
    """Rebuild the detector's session on TensorRT (engines cached in ``cache_dir``).

    Raises RuntimeError when onnxruntime here has no TensorrtExecutionProvider or the detector
    is not CenterFace; never falls back quietly.
    """
    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in available:
        raise RuntimeError(
            f"TensorRT requested but onnxruntime has no TensorrtExecutionProvider ({available})"
        )
    if detector.base is None:
        raise RuntimeError("TensorRT is only wired for the centerface detector")
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
    model = cf._dynamic_model(cf.bundled_model_path())
    detector.base.session = ort.InferenceSession(model, providers=providers)
    log.info("detector session on %s", detector.base.session.get_providers()[0])
