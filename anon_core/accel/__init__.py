"""GPU throughput path: batched detection and region methods on a torch device, one switch.

``AnonConfig.device`` is the switch: ``select_backend(config)`` gives a ``FaceAnonymizer`` with
the plain CPU stage for 'cpu' and with the ``AcceleratedStage`` for 'cuda' (an unusable CUDA
raises at once). ``accelerated_anonymizer(AnonConfig(device="cpu"))`` runs the accelerated code
on the CPU, which is how it is tested on machines without a GPU.
"""

from __future__ import annotations

from faceveil.anon_core.accel.device import (
    describe,
    nvjpeg_available,
    tensorrt_available,
    torch_device,
)
from faceveil.anon_core.accel.jpeg import DeviceJpeg
from faceveil.anon_core.accel.regions import SUPPORTED, TorchRegionMethods
from faceveil.anon_core.accel.stage import AcceleratedStage, AccelOptions, accelerated_anonymizer
from faceveil.anon_core.accel.torchnet import CenterFaceNet, TorchCenterFace
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer
from faceveil.anon_core.prefetch import Prefetcher


def select_backend(
    config: AnonConfig, options: AccelOptions | None = None, *, accelerated: bool | None = None
) -> FaceAnonymizer:
    """The anonymizer for ``config``: the CPU stage on 'cpu', the accelerated stage on 'cuda'.

    ``accelerated`` overrides the choice: True runs the accelerated path on 'cpu' (tests);
    False on 'cuda' gives the plain pipeline with only onnxruntime on the GPU. Raises
    RuntimeError when 'cuda' is asked for and this process cannot use it.
    """
    if config.device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {config.device!r}; use 'cpu' or 'cuda'")
    if accelerated is None:
        accelerated = config.device == "cuda"
    if accelerated:
        return accelerated_anonymizer(config, options)
    return FaceAnonymizer(config)


__all__ = [
    "SUPPORTED",
    "AccelOptions",
    "AcceleratedStage",
    "CenterFaceNet",
    "DeviceJpeg",
    "Prefetcher",
    "TorchCenterFace",
    "TorchRegionMethods",
    "accelerated_anonymizer",
    "describe",
    "nvjpeg_available",
    "select_backend",
    "tensorrt_available",
    "torch_device",
]
