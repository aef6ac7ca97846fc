"""onnxruntime sessions with an explicit device policy: CUDA only when asked for, never silently."""

from __future__ import annotations

import logging

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

log = logging.getLogger(__name__)

# What a failing model stage raises: onnxruntime's errors are not RuntimeError subclasses, and
# torch reports CUDA out-of-memory as a RuntimeError. An image that hits one is quarantined.
INFERENCE_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    MemoryError,
    IndexError,
    ort_state.Fail,
    ort_state.RuntimeException,
    ort_state.InvalidArgument,
    ort_state.EPFail,
)

ort.set_default_logger_severity(3)


def providers_for(device: str) -> list[str]:
    """Execution providers for ``device`` ('cpu' or 'cuda'); CUDA must exist if asked for."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                "device 'cuda' requested but onnxruntime has no CUDAExecutionProvider "
                f"(available: {available}); install onnxruntime-gpu or run with device 'cpu'"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


def make_session(model: bytes | str, device: str = "cpu", threads: int = 0) -> ort.InferenceSession:
    """A session on ``device`` with ``threads`` intra-op threads (0: onnxruntime decides)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, sess_options=options, providers=providers_for(device))
    log.info("onnxruntime session on %s", session.get_providers()[0])
    return session
