"""In-job privacy sample (``run --audit-sample``): measure a random fraction of faces inside the
workers, where the original and the anonymized face are both in memory, and merge the partial
figures into one report. (Not the signed audit log: that is ``jobs.auditlog``.)

Worker use::

    config = SampleConfig(0.01, seed=job_seed, attacker="models/mobilefacenet_128d.onnx")
    sampler = PrivacySampler(config)
    sampler.observe(sample_id, original_rgb, anonymized_rgb, faces)   # per anonymized sample
    partial = sampler.summary()                                 # JSON-able, per actor / shard
    write_privacy_report(f"{out}/report", partials)             # on the driver (privacy_report)
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from faceveil.anon_core.faces import Faces, face_regions, matched
from faceveil.anon_core.landmarks import landmark_error, points_in
from faceveil.anon_core.models import dlib_model, sha256_file
from faceveil.jobs.config import JobConfig

log = logging.getLogger(__name__)

SIM_BINS = 200  # over [-1, 1]
LMK_BINS = 100  # over [0, 1]; larger errors land in the last bin
CROP_SIDE = 112
COUNTS = ("images_seen", "faces_seen", "faces_sampled", "faces_failed", "redetected", "landmark_n")
SUMS = ("similarity_sum", "landmark_sum")
HISTS = ("similarity_hist", "impostor_hist", "landmark_hist")


def _bin(value: float, lo: float, hi: float, bins: int) -> int:
    return int(np.clip((value - lo) / (hi - lo) * bins, 0, bins - 1))


def _png_b64(rgb: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError("could not encode a sampled crop")
    return base64.b64encode(buf.tobytes()).decode()


def _crop(rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (int(v) for v in region)
    crop = rgb[y1:y2, x1:x2]
    scale = CROP_SIDE / max(crop.shape[:2])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class SampleConfig:
    """What the privacy sample measures, and with what: a ``fraction`` of faces drawn with
    ``seed``; the ``attacker`` recognizer (an ONNX file; None: dlib's ResNet); the ``detector``
    that looks for faces again in the anonymized image (None: ``scrfd`` when ``model_root`` is
    given, else ``centerface``); whether the report may keep original crops; how many example
    crops it keeps; and the device and threads the models run on."""

    fraction: float
    seed: int | str = 0
    attacker: str | Path | None = None
    detector: str | None = None
    model_root: str | Path | None = None
    keep_originals: bool = False
    max_examples: int = 48
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {self.fraction}")
        set_field = object.__setattr__
        set_field(self, "seed", str(self.seed))
        set_field(self, "attacker", str(self.attacker) if self.attacker else None)
        set_field(self, "model_root", str(self.model_root) if self.model_root else None)
        if self.detector is None:
            set_field(self, "detector", "scrfd" if self.model_root else "centerface")


@dataclass(frozen=True)
class _Seen:
    """One observed image: its sample id, original and anonymized pixels."""

    sample_id: str
    original: np.ndarray
    anonymized: np.ndarray


class _Models:
    """The models the privacy sample needs, loaded on first use inside the worker."""

    def __init__(self, config: SampleConfig) -> None:
        from faceveil.anon_core.attackers import build_attackers
        from faceveil.anon_core.detectors import build_detector
        from faceveil.anon_core.landmarks import Dlib68

        paths = [config.attacker] if config.attacker else []
        self.attacker = build_attackers(paths, config.device, config.threads)[0]
        self.detector = build_detector(
            config.detector, config.model_root, device=config.device, threads=config.threads
        )
        self.landmarks = Dlib68()


class PrivacySampler:
    """Picklable per-actor accumulator of privacy figures for a random fraction of faces
    (:class:`SampleConfig`).

    A face is sampled when ``sha256(seed, sample id, face index)`` falls below ``fraction``, so the
    selection is the same on every run and worker. No pixels are kept except small anonymized
    crops for the report's grid (up to ``max_examples``, those with the lowest draws) and, with
    ``keep_originals``, the matching original crops. Embeddings stay in memory (the impostor
    reference) and are never part of a summary or a pickle.
    """

    def __init__(self, config: SampleConfig) -> None:
        self.config = config
        self._models: _Models | None = None
        self._recent: deque = deque(maxlen=16)
        self._state = self._empty()

    def _empty(self) -> dict:
        state: dict = {name: 0 for name in COUNTS}
        state.update({name: 0.0 for name in SUMS})
        state["similarity_hist"] = [0] * SIM_BINS
        state["impostor_hist"] = [0] * SIM_BINS
        state["landmark_hist"] = [0] * LMK_BINS
        state["examples"] = []
        return state

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_models"] = None
        state["_recent"] = deque(maxlen=16)
        return state

    def draw(self, sample_id: str, face: int) -> float:
        """The face's uniform draw in [0, 1); sampled when below ``fraction``."""
        digest = hashlib.sha256(f"{self.config.seed}\0{sample_id}\0{face}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def observe(
        self, sample_id: str, original_rgb: np.ndarray, anonymized_rgb: np.ndarray, faces: Faces
    ) -> int:
        """Measure the sampled faces of one image; returns how many were sampled."""
        self._state["images_seen"] += 1
        self._state["faces_seen"] += len(faces)
        fraction = self.config.fraction
        picks = [(i, u) for i in range(len(faces)) if (u := self.draw(sample_id, i)) < fraction]
        if not picks:
            return 0
        if self._models is None:
            self._models = _Models(self.config)
        seen = _Seen(sample_id, original_rgb, anonymized_rgb)
        found = self._models.detector([anonymized_rgb])[0]
        regions = face_regions(faces, original_rgb.shape)
        for i, u in picks:
            try:
                self._measure(seen, faces.select(np.array([i])), found)
            except (ValueError, RuntimeError) as exc:  # e.g. degenerate landmarks: not fatal
                log.debug("privacy sample could not measure a face: %s", type(exc).__name__)
                self._state["faces_failed"] += 1
                continue
            self._example(seen, i, u, regions[i])
        return len(picks)

    def _measure(self, seen: _Seen, face: Faces, found: Faces) -> None:
        models, s = self._models, self._state
        sample_id, original, anonymized = seen.sample_id, seen.original, seen.anonymized
        guide = models.attacker.guide(original, face.boxes[0], face.landmarks5[0])
        before, after = models.attacker.embed([original, anonymized], [guide, guide])
        before_points = models.landmarks([original], [face])[0].landmarks68[0]
        after_points = points_in(models.landmarks, anonymized, face.boxes[0], found)
        err = landmark_error(before_points, after_points)
        sim = float(before @ after)
        # Everything is measured before any figure is counted, so a failure counts nothing.
        s["faces_sampled"] += 1
        s["similarity_sum"] += sim
        s["similarity_hist"][_bin(sim, -1, 1, SIM_BINS)] += 1
        for other_id, other in self._recent:
            if other_id != sample_id:
                s["impostor_hist"][_bin(float(before @ other), -1, 1, SIM_BINS)] += 1
        self._recent.append((sample_id, after))
        s["redetected"] += int(matched(found, face.boxes[0]))
        s["landmark_n"] += 1
        s["landmark_sum"] += err
        s["landmark_hist"][_bin(err, 0, 1, LMK_BINS)] += 1

    def _example(self, seen: _Seen, face: int, u: float, region: np.ndarray) -> None:
        examples, most = self._state["examples"], self.config.max_examples
        if len(examples) >= most and u >= examples[-1]["draw"]:
            return
        if region[2] <= region[0] or region[3] <= region[1]:
            return
        item = {
            "draw": u,
            "sample": seen.sample_id,
            "face": face,
            "anonymized_png": _png_b64(_crop(seen.anonymized, region)),
        }
        if self.config.keep_originals:
            item["original_png"] = _png_b64(_crop(seen.original, region))
        examples.append(item)
        examples.sort(key=lambda e: e["draw"])
        del examples[most:]

    def summary(self) -> dict:
        """This actor's partial figures (JSON-able; merge several with ``merge``)."""
        config = self.config
        return {
            "kind": "faceveil-audit-partial",
            "fraction": config.fraction,
            "seed": config.seed,
            "max_examples": config.max_examples,
            "attacker": _attacker_info(config.attacker),
            "detector": config.detector,
            **{k: (list(v) if isinstance(v, list) else v) for k, v in self._state.items()},
        }


def _attacker_info(path: str | None) -> dict:
    if path is None:
        weights = dlib_model("dlib_face_recognition_resnet_model_v1.dat")
        return {"name": "dlib_resnet", "sha256": sha256_file(str(weights))}
    return {"name": Path(path).name, "sha256": sha256_file(path)}


def merge(summaries: Sequence[dict]) -> dict:
    """One summary from the partial summaries of many actors (counts and histograms add up;
    examples keep the lowest draws)."""
    if not summaries:
        raise ValueError("no privacy sample summaries to merge")
    first = summaries[0]
    merged = {k: first[k] for k in ("fraction", "seed", "attacker", "detector", "max_examples")}
    merged["kind"] = "faceveil-audit"
    for name in (*COUNTS, *SUMS):
        merged[name] = sum(s[name] for s in summaries)
    for name in HISTS:
        merged[name] = [int(v) for v in np.sum([s[name] for s in summaries], axis=0)]
    examples = sorted((e for s in summaries for e in s["examples"]), key=lambda e: e["draw"])
    merged["examples"] = examples[: merged["max_examples"]]
    return merged


def privacy_sampler(config: JobConfig) -> PrivacySampler | None:
    """The job's privacy sampler (picklable, loads its models in the actor), or None when
    ``--audit-sample`` is 0."""
    if config.audit.fraction <= 0:
        return None
    audit = config.audit
    sample = SampleConfig(
        audit.fraction,
        seed=audit.seed,
        attacker=audit.attacker,
        model_root=config.anon.model_root,
        keep_originals=audit.report_originals,
    )
    return PrivacySampler(sample)
