"""Baseline anonymizers: blur, pixelate and mask over the whole-face region of every face."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from faceveil.anon_core.faces import Faces, box_regions, face_regions
from faceveil.anon_core.methods.base import MethodOutput, register


@dataclass(frozen=True)
class ResizePlan:
    """How blur and pixelate rewrite a crop: area-shrink it to ``width`` x ``height``, Gaussian-blur
    that with ``sigma`` (0: no blur), and enlarge it back. The device versions
    (``anon_core.accel.regions``) follow the same plan."""

    width: int
    height: int
    sigma: float = 0.0


# How far past the detector's box a method's region reaches (``face_regions``): mask's default.
REGION_GROW = 0.3
# Blur's and pixelate's default reach, which covers the hairline and the ears. On the full
# lfw_dev over three identity splits (BENCHMARKS.md, issue 13), at 0.3 the worst attack of
# ``faceveil eval`` linked 3.3% of blurred and of pixelated probes (target 3%, chance 1.3%); at
# 0.6, 2.4% and 2.2%. Mask scored 2.6% and 2.1%. Jobs record the reach (``JobConfig``).
WIDE_GROW = 0.6


class _RegionMethod:
    """Shared driver: compute whole-face regions, then rewrite each region's pixels."""

    name = "region"
    needs_landmarks68 = False
    needs_embeddings = False

    def __init__(self, grow: float = REGION_GROW) -> None:
        if not 0.0 <= grow <= 2.0:
            raise ValueError(f"grow must be in [0, 2], got {grow}")
        self.grow = grow

    def __call__(self, image: np.ndarray, faces: Faces) -> MethodOutput:
        out = image.copy()
        regions = self.regions(faces, image.shape)
        for x1, y1, x2, y2 in regions:
            if x2 > x1 and y2 > y1:
                out[y1:y2, x1:x2] = self.rewrite(out[y1:y2, x1:x2])
        return MethodOutput(out, regions, (self.name,) * len(regions), (None,) * len(regions))

    def regions(self, faces: Faces, shape: tuple[int, ...]) -> np.ndarray:
        """The region rewritten for each face: its whole-face region (``face_regions``)."""
        return face_regions(faces, shape, self.grow)

    def rewrite(self, crop: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# Blur's sigma as a fraction of the region's longer side, by default. On the full lfw_dev, against
# every attack of ``faceveil eval`` (BENCHMARKS.md, issue 13), the earlier 1/8 let a parrot
# trained on blurred faces link a person's photos at 9.2% rank-1 (chance 1.3%; target 3%). At
# 0.75 the worst attack scored 2.7%; at 1.0, in the same run, 3.7%, and at 0.5 (a run without
# the inversion attacks) 4.0%. A blur this strong sits at the target's edge, where the mask is
# below it. Jobs record the strength they drew with (``JobConfig``).
BLUR_STRENGTH = 0.75


@register("blur")
class Blur(_RegionMethod):
    """Gaussian blur whose width scales with the face, so no recognizable detail survives.

    ``strength`` is the blur sigma as a fraction of the region's longer side; the default
    (``BLUR_STRENGTH``, 0.75) leaves a smooth patch of the region's colours. The earlier 1/8
    left a face-sized smudge that an attacker trained on blurred faces could still link.
    """

    name = "blur"

    def __init__(self, grow: float = WIDE_GROW, strength: float = BLUR_STRENGTH) -> None:
        super().__init__(grow)
        if strength <= 0:
            raise ValueError(f"strength must be positive, got {strength}")
        self.strength = strength

    def plan(self, h: int, w: int) -> ResizePlan:
        """Blur a small copy then enlarge: the look of a huge kernel at a fraction of the cost."""
        sigma = max(1.0, self.strength * max(h, w))
        factor = max(1.0, sigma / 4.0)
        return ResizePlan(max(1, round(w / factor)), max(1, round(h / factor)), sigma / factor)

    def rewrite(self, crop: np.ndarray) -> np.ndarray:
        h, w = crop.shape[:2]
        plan = self.plan(h, w)
        small = cv2.resize(crop, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), plan.sigma, borderType=cv2.BORDER_REPLICATE)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


# Cells across the region's longer side by default. On the full lfw_dev, against every attack of
# ``faceveil eval`` (BENCHMARKS.md, issue 13), 8 cells let a parrot trained on pixelated faces
# link a person's photos at 4.5% rank-1 (chance 1.3%; target 3%), and 5 cells at 5.2%; with 3
# cells the worst attack scored 2.5%. Jobs record the cells they drew with (``JobConfig``).
PIXELATE_BLOCKS = 3


@register("pixelate")
class Pixelate(_RegionMethod):
    """Mosaic of ``blocks`` cells across the region's longer side (``PIXELATE_BLOCKS``)."""

    name = "pixelate"

    def __init__(self, grow: float = WIDE_GROW, blocks: int = PIXELATE_BLOCKS) -> None:
        super().__init__(grow)
        if not 2 <= blocks <= 64:
            raise ValueError(f"blocks must be in [2, 64], got {blocks}")
        self.blocks = blocks

    def plan(self, h: int, w: int) -> ResizePlan:
        """Square cells, ``blocks`` of them across the longer side."""
        cell = max(h, w) / self.blocks
        return ResizePlan(max(1, round(w / cell)), max(1, round(h / cell)))

    def rewrite(self, crop: np.ndarray) -> np.ndarray:
        h, w = crop.shape[:2]
        plan = self.plan(h, w)
        small = cv2.resize(crop, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


@register("mask")
class Mask(_RegionMethod):
    """Solid fill of the region: nothing of the original face remains."""

    name = "mask"

    def __init__(
        self, grow: float = REGION_GROW, color: tuple[int, int, int] = (96, 96, 96)
    ) -> None:
        super().__init__(grow)
        self.color = np.asarray(color, dtype=np.uint8)

    def rewrite(self, crop: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.color, crop.shape).copy()


class BoxMask(Mask):
    """A mask over each face's box and nothing around it: the fallback of methods that cannot
    replace a face (not in the registry; ``mask`` itself covers the grown whole-face region)."""

    def __init__(self, color: tuple[int, int, int] = (96, 96, 96)) -> None:
        super().__init__(0.0, color)

    def regions(self, faces: Faces, shape: tuple[int, ...]) -> np.ndarray:
        return box_regions(faces, shape)
