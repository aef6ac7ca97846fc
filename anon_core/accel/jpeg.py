"""JPEG decode and encode on the device, batched, through ``torchvision.io`` (nvJPEG on a GPU),
with the CPU codec (PIL, ``anon_core.imageio``) wherever torchvision is missing or unusable.

Only files whose header shows a plain RGB JPEG within the size limits, with no EXIF rotation and
an end-of-image marker, are decoded here; everything else (and any decoder failure) is left to
``anon_core.imageio.decode_image``, which applies every safety rule and quarantines what it
rejects. nvJPEG may round a few pixels differently from libjpeg-turbo and its encoder writes
other bytes than PIL's, so this is used only when asked for (``AccelOptions.nvjpeg``).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch
from PIL import Image

from faceveil.anon_core.imageio import (
    MIN_SIDE,
    DecodedImage,
    ImageError,
    decode_image,
    encode_image,
)

log = logging.getLogger(__name__)

QUALITY = 95  # the quality of anon_core.imageio.encode_image's JPEGs
_LOCK = threading.Lock()  # one device decode/encode at a time: torchvision shares one handle
_EOI = b"\xff\xd9"


def torchvision_io() -> ModuleType | None:
    """``torchvision.io`` when it is installed and loads with this torch, else None."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        import torchvision.io as tvio
    except (ImportError, OSError, RuntimeError) as exc:  # a build for another torch
        log.warning("torchvision is installed but unusable (%s); JPEGs use PIL", exc)
        return None
    return tvio if hasattr(tvio, "decode_jpeg") and hasattr(tvio, "encode_jpeg") else None


def plain_jpeg(data: bytes, max_pixels: int) -> bool:
    """Whether ``data`` is an RGB JPEG the device may decode (header only, no pixels read)."""
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


class DeviceJpeg:
    """Batched JPEG codec on ``device``: torchvision's when ``use_torchvision`` (default: on
    CUDA) and it is importable (nvJPEG on CUDA, libjpeg on the CPU), else PIL with a copy to
    the device.

    ``decode`` gives each plain JPEG as an H x W x 3 uint8 device tensor and None for the rest
    (to be decoded, or quarantined, by ``imageio.decode_image``); ``encode`` gives JPEG bytes
    at ``QUALITY`` with no metadata.
    """

    def __init__(self, device: torch.device, use_torchvision: bool | None = None) -> None:
        self.device = device
        if use_torchvision is None:
            use_torchvision = device.type == "cuda"
        self.io = torchvision_io() if use_torchvision else None
        self.name = f"torchvision ({device.type})" if self.io else "PIL (host)"

    def decode(self, datas: Sequence[bytes], max_pixels: int) -> list[torch.Tensor | None]:
        plain = [i for i, data in enumerate(datas) if plain_jpeg(data, max_pixels)]
        out: list[torch.Tensor | None] = [None] * len(datas)
        if self.io is None:
            for i in plain:
                out[i] = self._pil_decode(datas[i], max_pixels)
            return out
        raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in plain]
        try:
            images = self._tv_decode(raw)
        except RuntimeError as exc:  # one bad file fails the batch: retry one by one
            log.debug("batched JPEG decode failed (%s); decoding one by one", type(exc).__name__)
            images = [self._tv_decode_one(r) for r in raw]
        for i, chw in zip(plain, images, strict=True):
            out[i] = None if chw is None else chw.permute(1, 2, 0)
        return out

    def encode(self, images: Sequence[torch.Tensor]) -> list[bytes]:
        """JPEG bytes of H x W x 3 uint8 device images."""
        if self.io is None:
            return [encode_image(image.cpu().numpy(), "jpg") for image in images]
        chw = [image.permute(2, 0, 1).contiguous() for image in images]
        with _LOCK:
            encoded = self.io.encode_jpeg(chw, quality=QUALITY) if chw else []
        return [bytes(e.cpu().numpy()) for e in encoded]

    def decode_image(self, data: bytes, max_pixels: int) -> DecodedImage | None:
        """One plain JPEG decoded here and copied to the host; None: the CPU decodes it."""
        image = self.decode([data], max_pixels)[0]
        if image is None:
            return None
        rgb = np.ascontiguousarray(image.cpu().numpy())
        return DecodedImage(rgb=rgb, format="JPEG", lossless=False, exact=True)

    def _tv_decode(self, raw: list[torch.Tensor]) -> list[torch.Tensor]:
        if not raw:
            return []
        mode = self.io.ImageReadMode.RGB
        with _LOCK:
            if self.device.type == "cuda":
                return self.io.decode_jpeg(raw, mode=mode, device=self.device)
            return [self.io.decode_jpeg(r, mode=mode) for r in raw]

    def _tv_decode_one(self, raw: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._tv_decode([raw])[0]
        except RuntimeError:
            return None

    def _pil_decode(self, data: bytes, max_pixels: int) -> torch.Tensor | None:
        try:
            rgb = decode_image(data, max_pixels).rgb
        except ImageError:
            return None
        return torch.from_numpy(np.require(rgb, requirements="W")).to(self.device)
