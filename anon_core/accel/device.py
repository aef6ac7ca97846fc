"""Which accelerator features this process can use, checked up front so a request never hangs."""

from __future__ import annotations

import logging

import onnxruntime as ort
import torch

from faceveil.anon_core.accel.jpeg import torchvision_io

log = logging.getLogger(__name__)

DEVICES = ("cpu", "cuda")


def torch_device(device: str) -> torch.device:
    """The torch device for ``device`` ('cpu' or 'cuda'); 'cuda' must really be usable.

    Raises RuntimeError naming what is missing (a CPU-only torch build, no visible GPU) instead
    of falling back to the CPU. onnxruntime's CUDA provider is needed only by the 'onnxruntime'
    backend, which checks for it itself.
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {list(DEVICES)}")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'}"
        raise RuntimeError(
            f"device 'cuda' requested but torch sees no CUDA device ({build}); install a CUDA "
            "build of torch on a GPU node, or run with device 'cpu'"
        )
    return torch.device("cuda", torch.cuda.current_device())


def onnxruntime_device(device: str) -> str:
    """Where the host-side detector's onnxruntime session runs for ``device``: 'cuda' only when
    onnxruntime has its CUDA provider (onnxruntime-gpu), else 'cpu'. CenterFace itself runs on
    the device through torch either way; the session serves detectors without a device path
    (``scrfd``) and backend 'onnxruntime', which checks for the provider itself."""
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return "cuda"
    return "cpu"


def tensorrt_available() -> bool:
    """Whether onnxruntime here was built with the TensorRT execution provider."""
    return "TensorrtExecutionProvider" in ort.get_available_providers()


def nvjpeg_available() -> bool:
    """Whether torchvision with GPU JPEG decoding (nvJPEG) can be used in this process."""
    return torch.cuda.is_available() and torchvision_io() is not None


def describe() -> dict:
    """Versions and accelerator facts for logs and benchmark reports (no host names)."""
    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "cuda_available": torch.cuda.is_available(),
        "tensorrt_available": tensorrt_available(),
        "nvjpeg_available": nvjpeg_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    return info
