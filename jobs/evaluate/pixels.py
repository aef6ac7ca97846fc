"""The pixel inversion attacker: a small torch U-Net that learns to undo an anonymizer on face
crops, fitted on the training identities' (anonymized crop -> original crop) pairs.

Crops are ``side`` x ``side`` pixels at the ArcFace alignment of the ORIGINAL's five points (the
112 x 112 template scaled down). The U-Net is residual: it predicts a correction to the
anonymized crop, and starts at zero (the identity map). To re-identify, the correction is
warped back onto the full-resolution anonymized image, and every recognizer embeds the restored
image with the original's alignment, exactly as in the aligned attack. The budget (steps,
width, threads, seed) is fixed and the same for every method; training is seeded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import nn

from faceveil.anon_core.embeddings import ARCFACE_112
from faceveil.anon_core.imageio import decode_image
from faceveil.jobs.evaluate.config import PixelBudget
from faceveil.jobs.evaluate.heads import torch_threads
from faceveil.jobs.evaluate.measurements import EvalSession, MethodRun, Originals
from faceveil.jobs.evaluate.recognizer import crops_tensor


def crop_matrix(landmarks5: np.ndarray, side: int) -> np.ndarray:
    """The 2 x 3 similarity taking image coordinates to the ``side`` x ``side`` crop."""
    src = np.asarray(landmarks5, np.float32).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(src, ARCFACE_112 * (side / 112.0), method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("landmarks are degenerate; no similarity transform fits them")
    return matrix


def face_crop(image: np.ndarray, matrix: np.ndarray, side: int) -> np.ndarray:
    """The ``side`` x ``side`` RGB crop of ``image`` under ``matrix`` (uint8)."""
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_AREA, borderValue=0.0)


def paste_correction(image: np.ndarray, correction: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``image`` plus ``correction`` (side x side x 3, in pixel units) warped back from the crop."""
    h, w = image.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    back = cv2.warpAffine(correction.astype(np.float32), matrix, (w, h), flags=flags)
    return np.clip(image.astype(np.float32) + back, 0, 255).astype(np.uint8)


def _block(cin: int, cout: int) -> nn.Sequential:
    first, second = nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 3, padding=1)
    return nn.Sequential(first, nn.ReLU(), second, nn.ReLU())


class UNet(nn.Module):
    """Three scales down, three up with skips; outputs x + f(x), f's last layer zero at start."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.down = nn.ModuleList([_block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)])
        self.middle = _block(4 * w, 4 * w)
        self.up = nn.ModuleList([_block(8 * w, 4 * w), _block(6 * w, 2 * w), _block(3 * w, w)])
        self.out = nn.Conv2d(w, 3, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, h = [], x
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = nn.functional.max_pool2d(h, 2)
        h = self.middle(h)
        for block in self.up:
            h = nn.functional.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1))
        return x + self.out(h)


def seeded_batches(
    n: int, steps: int, batch: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """``steps`` batches of ``batch`` indices below n (none when n is 0), epoch after epoch of
    permutations drawn from ``generator``."""
    order = torch.zeros(0, dtype=torch.int64)
    for _ in range(steps if n else 0):
        if len(order) < min(batch, n):
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        yield order[:batch]
        order = order[batch:]


@dataclass
class PixelInversion:
    """Fit on crop pairs, then predict corrections (in pixel units) for anonymized crops;
    ``losses`` is the training L1 (on [-1, 1] pixels) of each step."""

    budget: PixelBudget
    losses: list[float] = field(default_factory=list)
    fit_cpu_s: float = 0.0
    net: UNet | None = None

    def fit(self, anonymized: np.ndarray, originals: np.ndarray) -> PixelInversion:
        """Train on pairs: row i of both is the same face before and after (N x S x S x 3)."""
        b = self.budget
        started = time.process_time()
        with torch_threads(b.threads):
            torch.manual_seed(b.seed)
            generator = torch.Generator().manual_seed(b.seed)
            net = UNet(b.width)
            optimizer = torch.optim.Adam(net.parameters(), lr=b.lr)
            x, y = crops_tensor(anonymized), crops_tensor(originals)
            x, y = torch.cat([x, x.flip(3)]), torch.cat([y, y.flip(3)])
            for pick in seeded_batches(len(x), b.steps, b.batch, generator):
                loss = nn.functional.l1_loss(net(x[pick]), y[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                self.losses.append(float(loss.detach()))
        self.net = net.eval()
        self.fit_cpu_s = time.process_time() - started
        return self

    def correction(self, anonymized: np.ndarray) -> np.ndarray:
        """N x S x S x 3 float32: restored crop minus anonymized crop, in pixel units."""
        if self.net is None:
            raise RuntimeError("the pixel inversion is not fitted")
        with torch_threads(self.budget.threads), torch.no_grad():
            x = crops_tensor(anonymized)
            out = torch.cat([self.net(x[s : s + 64]) for s in range(0, len(x), 64)] or [x])
        return ((out.clamp(-1, 1) - x) * 127.5).permute(0, 2, 3, 1).numpy().astype(np.float32)


def restored_embeddings(
    run: MethodRun, originals: Originals, session: EvalSession
) -> tuple[dict[str, np.ndarray], dict]:
    """Fit the U-Net on the training identities' crop pairs of one method, restore the held-out
    anonymized images with it, and embed them with every recognizer at the original's
    alignment: (recognizer -> N x D embeddings, NaN outside the held-out samples; a summary
    for the report)."""
    split, budget = session.plan.split, session.config.budget.pixels
    train, test = split.train & run.valid, split.test & run.valid
    attackers = session.models.attackers
    out = {a.name: np.full_like(run.embeddings[a.name], np.nan) for a in attackers}
    if run.crops is None or originals.crops is None or train.sum() < 2:
        return out, {"reason": "fewer than 2 training pairs"}
    inverse = PixelInversion(budget).fit(run.crops[train], originals.crops[train])
    started = time.process_time()
    rows = np.flatnonzero(test)
    for chunk in np.array_split(rows, max(1, len(rows) // 32)):
        corrections = inverse.correction(run.crops[chunk])
        restored = [
            paste_correction(decode_image(run.encoded[i]).rgb, c, originals.crop_matrices[i])
            for i, c in zip(chunk, corrections, strict=True)
        ]
        for a in attackers:
            guides = [originals.guides[a.name][i] for i in chunk]
            out[a.name][chunk] = a.embed(restored, guides)
    losses = inverse.losses
    head = np.mean(losses[: max(1, len(losses) // 10)]) if losses else None
    tail = np.mean(losses[-max(1, len(losses) // 10) :]) if losses else None
    summary = {
        "parameters": sum(p.numel() for p in inverse.net.parameters()),
        "train_pairs": int(train.sum()),
        "restored_images": len(rows),
        "l1_first_tenth": None if head is None else round(float(head), 4),
        "l1_last_tenth": None if tail is None else round(float(tail), 4),
        "fit_cpu_s": round(inverse.fit_cpu_s, 3),
        "restore_cpu_s": round(time.process_time() - started, 3),
    }
    return out, summary
