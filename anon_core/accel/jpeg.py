"""Optional GPU JPEG decoding (nvJPEG through torchvision) for plain, well-formed RGB JPEGs.

Only files whose header shows a baseline-looking RGB JPEG within the size limits, with no EXIF
rotation and an end-of-image marker, are decoded on the GPU; everything else, and any GPU
failure, goes through ``anon_core.imageio.decode_image``, which applies every safety rule and
quarantines what it rejects. nvJPEG may round a few pixels differently from libjpeg-turbo, so
this is off unless asked for (``AccelOptions.nvjpeg``).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings

import numpy as np
import torch
from PIL import Image

from faceveil.anon_core.imageio import MIN_SIDE, DecodedImage

log = logging.getLogger(__name__)

_LOCK = threading.Lock()  # one GPU decode at a time: torchvision shares one nvJPEG handle
_EOI = b"\xff\xd9"


def plain_jpeg(data: bytes, max_pixels: int) -> bool:
    """Whether ``data`` is an RGB JPEG the GPU may decode (header only, no pixels read)."""
    if not data.rstrip(b"\0").endswith(_EOI):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            return (
                img.format == "JPEG"
                and img.mode == "RGB"
                and min(w, h) >= MIN_SIDE
                and w * h <= max_pixels
                and img.getexif().get(0x0112, 1) in (None, 1)
            )
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def gpu_decode(data: bytes, max_pixels: int, device: torch.device) -> DecodedImage | None:
    """The image decoded on ``device``, copied to host; None when the CPU decoder must do it."""
    if not plain_jpeg(data, max_pixels):
        return None
    from torchvision.io import ImageReadMode, decode_jpeg

    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        with _LOCK:
            chw = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        log.debug("GPU JPEG decode failed (%s); decoding on the CPU", type(exc).__name__)
        return None
    rgb = np.ascontiguousarray(chw.permute(1, 2, 0).cpu().numpy())
    return DecodedImage(rgb=rgb, format="JPEG", lossless=False, exact=True)
