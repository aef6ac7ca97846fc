"""``AccelOptions``: how the accelerated path runs (the device itself is ``AnonConfig.device``)."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class AccelOptions:
    """How the accelerated path runs.

    ``backend``: 'torch' runs CenterFace as a torch module built from the ONNX weights (a GPU
    needs nothing beyond torch); 'onnxruntime' binds the device tensors to an onnxruntime
    session (on 'cuda' that needs onnxruntime-gpu's CUDAExecutionProvider).
    ``precision``: the torch detector's 'fp32', 'bf16' or 'fp16' (CUDA only); see docs/gpu.md
    for where recall was checked unchanged.
    ``half``: float16 products in the region methods and TensorRT fp16 (CUDA only).
    ``tensorrt``: detector on onnxruntime's TensorRT provider (backend 'onnxruntime'), engines
    cached in ``trt_cache``.
    ``nvjpeg``: decode and encode JPEGs with torchvision on the device (nvJPEG on a GPU).
    ``workers``: decode/encode threads (0: ``AnonConfig.threads``, or 4 when that is 0).
    ``batch_pixels``: padded pixels per device batch (2**24 is 64 images of 512 x 512).
    """

    backend: str = "torch"
    precision: str = "fp32"
    half: bool = False
    tensorrt: bool = False
    trt_cache: str = "~/.cache/faceveil/tensorrt"
    nvjpeg: bool = False
    workers: int = 0
    batch_pixels: int = 1 << 24

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; use one of {list(BACKENDS)}")
        if self.tensorrt and self.backend != "onnxruntime":
            raise ValueError("tensorrt runs through onnxruntime: use backend 'onnxruntime'")
        if self.precision != "fp32" and self.backend != "torch":
            raise ValueError("precision applies to the torch backend only")
