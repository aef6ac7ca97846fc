"""Blur, pixelate and mask of face regions on a torch device, batched over many images at once.

Each baseline (``anon_core.methods.baselines``) resizes a face crop down, optionally blurs it and
resizes it back. Every one of those steps is linear along each axis, so a region's rewrite is a
chain of small matrix "sandwiches" ``L @ X @ R.T`` per colour channel. The matrices follow
OpenCV's own weights (INTER_AREA cells, the fixed-point Gaussian kernel of ``GaussianBlur`` on
8-bit images with replicated borders, INTER_LINEAR with 11-bit coefficients, INTER_NEAREST
indices) and each stage rounds to 8 bits as OpenCV does, so the result is within a level or two
of the CPU method. Regions of similar size are padded to a common bucket and done in one batched
matmul; overlapping regions of one image are done in order, as the CPU method does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import cv2
import numpy as np
import torch

from faceveil.anon_core import methods
from faceveil.anon_core.faces import Faces, face_regions
from faceveil.anon_core.methods.base import MethodOutput

log = logging.getLogger(__name__)

SUPPORTED = ("blur", "pixelate", "mask")
_BUCKET = 32  # regions are padded to multiples of this many pixels per side


@lru_cache(maxsize=1024)
def area_weights(n: int, s: int, area_path: bool) -> np.ndarray:
    """``s x n`` weights of cv2.resize INTER_AREA from ``n`` to ``s`` pixels along one axis.

    OpenCV averages whole cells only when both axes shrink (``area_path``); otherwise it uses
    linear weights computed its own way, reproduced here too.
    """
    out = np.zeros((s, n), np.float64)
    scale = n / s
    if s == n:
        return np.eye(n)
    if not area_path:
        inv = s / n
        for dx in range(s):
            sx = math.floor(dx * scale)
            fx = float(np.float32((dx + 1) - (sx + 1) * inv))
            fx = 0.0 if fx <= 0 else fx - math.floor(fx)
            b = round(fx * 2048) / 2048
            out[dx, min(sx, n - 1)] += 1 - b
            out[dx, min(sx + 1, n - 1)] += b
        return out
    for dx in range(s):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        sx2 = min(math.floor(fsx2), n - 1)
        sx1 = min(math.ceil(fsx1), sx2)
        cell = min(scale, n - fsx1)
        if sx1 - fsx1 > 1e-3:
            out[dx, sx1 - 1] = (sx1 - fsx1) / cell
        out[dx, sx1:sx2] = 1 / cell
        if fsx2 - sx2 > 1e-3:
            out[dx, sx2] = min(min(fsx2 - sx2, 1.0), cell) / cell
    return out


@lru_cache(maxsize=1024)
def linear_weights(n: int, s: int) -> np.ndarray:
    """``n x s`` weights of cv2.resize INTER_LINEAR from ``s`` up to ``n`` pixels (11-bit)."""
    fx = ((np.arange(n) + 0.5) * (s / n) - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    fx = fx - sx.astype(np.float32)
    edge = (sx < 0) | (sx >= s - 1)
    sx = np.clip(sx, 0, s - 1)
    fx[edge] = 0.0
    out = np.zeros((n, s), np.float64)
    rows = np.arange(n)
    np.add.at(out, (rows, sx), np.rint((1 - fx) * 2048) / 2048)
    np.add.at(out, (rows, np.minimum(sx + 1, s - 1)), np.rint(fx * 2048) / 2048)
    return out


@lru_cache(maxsize=1024)
def nearest_weights(n: int, s: int) -> np.ndarray:
    """``n x s`` selection of cv2.resize INTER_NEAREST from ``s`` to ``n`` pixels."""
    ifx = 1.0 / (n / s)
    src = np.minimum(np.floor(np.arange(n) * ifx).astype(np.int64), s - 1)
    out = np.zeros((n, s), np.float64)
    out[np.arange(n), src] = 1.0
    return out


@lru_cache(maxsize=64)
def cv2_gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1-D kernel cv2.GaussianBlur really applies to 8-bit images (multiples of 1/256).

    OpenCV quantizes the kernel for 8-bit input; the quantized taps are read back by blurring
    one bright pixel (each tap times 255, rounded, is the tap's numerator while it is < 0.5).
    """
    ksize = round(sigma * 3 * 2 + 1) | 1
    r = ksize // 2
    row = np.zeros((1, 4 * ksize + 1), np.uint8)
    row[0, 2 * ksize] = 255
    blurred = cv2.GaussianBlur(row, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)[0]
    taps = blurred[2 * ksize - r : 2 * ksize + r + 1].astype(np.float64)
    if taps.sum() != 256 or taps.max() >= 128:
        log.debug("unexpected OpenCV kernel for sigma %.3f; using the float kernel", sigma)
        return cv2.getGaussianKernel(ksize, sigma)[:, 0]
    return taps / 256


@lru_cache(maxsize=1024)
def gaussian_weights(s: int, sigma: float) -> np.ndarray:
    """``s x s`` Gaussian blur of one axis with replicated borders (cv2.BORDER_REPLICATE)."""
    kernel = cv2_gaussian_kernel(sigma)
    r = len(kernel) // 2
    out = np.zeros((s, s), np.float64)
    rows = np.arange(s)
    for k, tap in enumerate(kernel):
        np.add.at(out, (rows, np.clip(rows + k - r, 0, s - 1)), tap)
    return out


def _round(x: torch.Tensor, rounding: str) -> torch.Tensor:
    if rounding == "even":
        return torch.round(x)
    if rounding == "up":
        return torch.floor(x + 0.5)
    return x


def _stack(mats: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    out = np.zeros((len(mats), rows, cols), np.float32)
    for i, m in enumerate(mats):
        out[i, : m.shape[0], : m.shape[1]] = m
    return out


def _waves(boxes: np.ndarray) -> np.ndarray:
    """Wave number per region of one image: a region comes after every earlier one it overlaps."""
    wave = np.zeros(len(boxes), np.int64)
    for i in range(1, len(boxes)):
        x1, y1, x2, y2 = boxes[i]
        prev = boxes[:i]
        hit = (prev[:, 0] < x2) & (x1 < prev[:, 2]) & (prev[:, 1] < y2) & (y1 < prev[:, 3])
        wave[i] = wave[:i][hit].max() + 1 if hit.any() else 0
    return wave


class TorchRegionMethods:
    """Blur, pixelate or mask every face region of a batch of images on a torch ``device``.

    Built from the same name and options as the CPU baseline (``methods.create`` validates
    them) and with the same region geometry (``face_regions``). ``apply`` rewrites a batch of
    device images in place; calling the object on one numpy image follows the anonymizer
    contract, so it can stand in for the baseline anywhere. ``half`` runs the large matrix
    products in float16 (CUDA only), which may move a pixel by one more level.
    """

    needs_landmarks68 = False
    needs_embeddings = False

    def __init__(
        self,
        name: str = "blur",
        options: Mapping[str, object] | None = None,
        device: str | torch.device = "cpu",
        half: bool = False,
    ) -> None:
        if name not in SUPPORTED:
            raise ValueError(f"no torch version of method {name!r}; have {list(SUPPORTED)}")
        self.name = name
        self.reference = methods.create(name, **dict(options or {}))
        self.grow = self.reference.grow
        self.device = torch.device(device)
        if half and self.device.type != "cuda":
            raise ValueError("half precision (fp16) needs a CUDA device")
        self.half = half
        if name == "mask":
            self.color = torch.as_tensor(self.reference.color, dtype=torch.uint8).to(self.device)

    def regions(self, faces: Faces, shape: tuple[int, ...]) -> np.ndarray:
        """Whole-face regions, exactly those the CPU baseline rewrites."""
        return face_regions(faces, shape, self.grow)

    def __call__(self, image: np.ndarray, faces: Faces) -> MethodOutput:
        regions = self.regions(faces, image.shape)
        batch = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))[None]
        out = self.apply(batch.to(self.device), [regions])[0].cpu().numpy()
        n = len(regions)
        return MethodOutput(out, regions, (self.name,) * n, (None,) * n)

    def apply(self, images: torch.Tensor, regions: Sequence[np.ndarray]) -> torch.Tensor:
        """Rewrite, in place, ``regions[i]`` (N_i x 4 from ``regions``) of ``images[i]``.

        ``images`` is n x H x W x 3 uint8 on this object's device; images smaller than H x W
        sit in the top-left corner and their regions stay inside them. Returns ``images``.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"expected n x H x W x 3 uint8, got {tuple(images.shape)}")
        if len(regions) != len(images):
            raise ValueError(f"{len(regions)} region lists for {len(images)} images")
        table = self._table(regions)
        for wave in np.unique(table[:, 5]):
            for rows in self._buckets(table[table[:, 5] == wave]):
                self._rewrite(images, rows)
        return images

    def _table(self, regions: Sequence[np.ndarray]) -> np.ndarray:
        """Non-empty regions as rows (image, x1, y1, x2, y2, wave)."""
        parts = [np.zeros((0, 6), np.int64)]
        for i, boxes in enumerate(regions):
            boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
            boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
            wave = np.zeros(len(boxes), np.int64) if self.name == "mask" else _waves(boxes)
            index = np.full((len(boxes), 1), i, np.int64)
            parts.append(np.concatenate([index, boxes, wave[:, None]], axis=1))
        return np.concatenate(parts)

    @staticmethod
    def _buckets(table: np.ndarray, max_pixels: int = 1 << 24) -> list[np.ndarray]:
        """Rows grouped by padded size, each group small enough for one batched product."""
        sizes = -(-(table[:, 3:5] - table[:, 1:3]) // _BUCKET) * _BUCKET
        out = []
        for key in np.unique(sizes, axis=0):
            rows = table[(sizes == key).all(axis=1)]
            step = max(1, max_pixels // int(key[0] * key[1]))
            out.extend(rows[i : i + step] for i in range(0, len(rows), step))
        return out

    def _rewrite(self, images: torch.Tensor, rows: np.ndarray) -> None:
        """One bucket of non-overlapping regions: gather, transform, write back."""
        if self.name == "mask":
            for b, x1, y1, x2, y2 in rows[:, :5].tolist():
                images[b, y1:y2, x1:x2] = self.color
            return
        x1, y1, x2, y2 = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
        h, w = y2 - y1, x2 - x1
        hb, wb = -(-int(h.max()) // _BUCKET) * _BUCKET, -(-int(w.max()) // _BUCKET) * _BUCKET
        ri = np.minimum(y1[:, None] + np.arange(hb), y2[:, None] - 1)
        ci = np.minimum(x1[:, None] + np.arange(wb), x2[:, None] - 1)
        index = [torch.from_numpy(a).to(self.device) for a in (rows[:, 0], ri, ci)]
        x = images[index[0][:, None, None], index[1][:, :, None], index[2][:, None, :]]
        x = self._transform(x.permute(0, 3, 1, 2).float(), h, w, hb, wb)
        out = x.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        for r, (b, x1, y1, x2, y2) in enumerate(rows[:, :5].tolist()):
            images[b, y1:y2, x1:x2] = out[r, : y2 - y1, : x2 - x1]

    def _transform(
        self, x: torch.Tensor, h: np.ndarray, w: np.ndarray, hb: int, wb: int
    ) -> torch.Tensor:
        """Apply each stage's sandwich to the padded crops (R x 3 x hb x wb, float)."""
        plans = [self._stages(int(a), int(b)) for a, b in zip(h, w, strict=True)]
        last = len(plans[0]) - 1
        for k in range(last + 1):
            stage_rows = [p[k][0] for p in plans]
            stage_cols = [p[k][1] for p in plans]
            lr = hb if k == last else max(m.shape[0] for m in stage_rows)
            lc = hb if k == 0 else max(m.shape[1] for m in stage_rows)
            rr = wb if k == last else max(m.shape[0] for m in stage_cols)
            rc = wb if k == 0 else max(m.shape[1] for m in stage_cols)
            left = torch.from_numpy(_stack(stage_rows, lr, lc)).to(self.device)
            right = torch.from_numpy(_stack(stage_cols, rr, rc)).to(self.device)
            big = self.half and k in (0, last)  # the products over whole regions
            dtype = torch.float16 if big else torch.float32
            y = left.to(dtype)[:, None] @ x.to(dtype) @ right.to(dtype).transpose(1, 2)[:, None]
            x = _round(y.float(), plans[0][k][2])
        return x

    def _stages(self, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
        """The (rows, cols, rounding) stages that rewrite one h x w region."""
        plan = self.reference.plan(h, w)
        sh, sw = plan.height, plan.width
        area_path = sh <= h and sw <= w
        shrink = (area_weights(h, sh, area_path), area_weights(w, sw, area_path), "even")
        if self.name == "blur":
            return [
                shrink,
                (gaussian_weights(sh, plan.sigma), gaussian_weights(sw, plan.sigma), "up"),
                (linear_weights(h, sh), linear_weights(w, sw), "up"),
            ]
        return [shrink, (nearest_weights(h, sh), nearest_weights(w, sw), "")]
