"""Residual-face audit: run a different detector over a job's anonymized output and list every
face it finds that the job did not anonymize (a detection outside all recorded face regions)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

import fsspec
import numpy as np
from tqdm import tqdm

from faceveil.anon_core.detectors import build_detector, detector_info
from faceveil.anon_core.faces import Faces, face_regions, iou_matrix
from faceveil.anon_core.imageio import ImageError, decode_image
from faceveil.anon_core.report_page import dumps
from faceveil.jobs.datawriter import parquet_samples
from faceveil.jobs.shardio import DEFAULT_MAX_MEMBER_BYTES, IMAGE_MEMBER_EXTS
from faceveil.jobs.shardio import iter_samples as read_samples
from faceveil.jobs.storage import Location

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = DEFAULT_MAX_MEMBER_BYTES
REFUSED = "!refused"  # the parts entry that says why a member was not read


@dataclass(frozen=True)
class ResidualConfig:
    """A detection is covered (not a leak) when its IoU with a recorded bbox is at least
    ``min_iou`` or at least ``min_cover`` of its area lies inside a recorded region (the bbox
    grown by ``grow``, as the baselines grow it)."""

    out: str
    detector: str = "scrfd"
    model_root: str | None = None
    threshold: float | None = None
    min_iou: float = 0.3
    min_cover: float = 0.5
    grow: float = 0.3
    device: str = "cpu"
    threads: int = 0
    progress: bool = True


@dataclass(frozen=True)
class Residual:
    """One face the audit detector found that the job left as it was, in the sample
    ``sample_id`` (its ``__key__``) of ``shard``."""

    shard: str
    sample_id: str
    bbox: list[float]
    score: float
    status: str

    def to_json(self) -> dict:
        """The face's entry in ``residual_faces.json``: its fields, the sample id under ``key``."""
        return {("key" if n == "sample_id" else n): v for n, v in asdict(self).items()}


@dataclass
class ResidualReport:
    """Counts, leaks and samples that could not be checked."""

    shards: int = 0
    samples: int = 0
    leaks: list[Residual] = field(default_factory=list)
    unchecked: list[dict] = field(default_factory=list)
    detector: dict = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.leaks and not self.unchecked


def covered(
    box: np.ndarray, recorded: np.ndarray, shape: tuple[int, ...], config: ResidualConfig
) -> bool:
    """Whether detection ``box`` (x1, y1, x2, y2) is one of the ``recorded`` faces (N x 4)."""
    if len(recorded) == 0:
        return False
    det = np.asarray(box, np.float64)[None, :4]
    if iou_matrix(det, recorded).max() >= config.min_iou:
        return True
    faces = Faces(
        np.hstack([recorded, np.ones((len(recorded), 1))]).astype(np.float32),
        np.zeros((len(recorded), 10), np.float32),
    )
    regions = face_regions(faces, shape, config.grow).astype(np.float64)
    iw = np.clip(
        np.minimum(det[:, 2], regions[:, 2]) - np.maximum(det[:, 0], regions[:, 0]), 0, None
    )
    ih = np.clip(
        np.minimum(det[:, 3], regions[:, 3]) - np.maximum(det[:, 1], regions[:, 1]), 0, None
    )
    area = max((det[0, 2] - det[0, 0]) * (det[0, 3] - det[0, 1]), 1e-9)
    return bool((iw * ih / area).max() >= config.min_cover)


def iter_samples(
    fs: fsspec.AbstractFileSystem, path: str
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(sample id, {extension: bytes}) for each sample of a WebDataset tar, streamed in order
    through the one shard reader (:func:`jobs.shardio.iter_samples`); a member it refuses
    (sparse, not a regular file, over its cap) is not read and ``parts[REFUSED]`` says why."""
    if path.endswith(".parquet"):  # --output-format parquet
        with fs.open(path, "rb") as f:
            for sample_id, ext, data, meta in parquet_samples(f):
                yield sample_id, {ext: data, "json": json.dumps(meta).encode()}
        return
    with fs.open(path, "rb") as f:
        for sample in read_samples(f, MAX_MEMBER_BYTES):
            refused = {REFUSED: sample.refused.encode()} if sample.refused else None
            yield sample.sample_id, refused or dict(sample.members)


def _check(
    sample_id: str, parts: dict[str, bytes], detector, config: ResidualConfig
) -> list[Residual] | str:
    if REFUSED in parts:
        return parts[REFUSED].decode()
    ext = next((e for e in parts if e in IMAGE_MEMBER_EXTS), None)
    if ext is None or "json" not in parts:
        return "sample has no image or no metadata"
    try:
        meta = json.loads(parts["json"])
        image = decode_image(parts[ext]).rgb
    except (ValueError, ImageError) as exc:
        return f"unreadable ({type(exc).__name__})"
    recorded = np.array([f["bbox"] for f in meta.get("faces", [])], np.float64).reshape(-1, 4)
    found = detector([image])[0]
    status = str(meta.get("status", ""))
    return [
        Residual("", sample_id, [round(float(v), 1) for v in b[:4]], round(float(b[4]), 3), status)
        for b in found.boxes
        if not covered(b[:4], recorded, image.shape, config)
    ]


def find_residual_faces(config: ResidualConfig) -> ResidualReport:
    """Scan every ``OUT/data/shard-*.tar`` or ``shard-*.parquet`` (local path or fsspec URL)."""
    fs, root = fsspec.core.url_to_fs(config.out)
    found = [fs.glob(f"{root.rstrip('/')}/data/shard-*.{kind}") for kind in ("tar", "parquet")]
    shards = sorted(found[0] + found[1])
    if not shards:
        raise FileNotFoundError(f"no data/shard-*.tar or shard-*.parquet under {config.out}")
    detector = build_detector(
        config.detector, config.model_root, config.threshold, config.device, config.threads
    )
    report = ResidualReport(shards=len(shards), detector=detector_info(detector))
    bar = tqdm(desc="residual faces", unit="img", disable=not config.progress)
    for shard in shards:
        name = shard.rsplit("/", 1)[-1]
        for sample_id, parts in iter_samples(fs, shard):
            report.samples += 1
            found = _check(sample_id, parts, detector, config)
            if isinstance(found, str):
                report.unchecked.append({"shard": name, "key": sample_id, "reason": found})
            else:
                report.leaks += [replace(r, shard=name) for r in found]
            bar.update()
    bar.close()
    return report


def write_residual_report(config: ResidualConfig, report: ResidualReport) -> str:
    """Write ``OUT/report/residual_faces.json``; returns its location."""
    body = {
        "kind": "faceveil-residual-faces",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "detector": report.detector,
        "criterion": {
            "min_iou": config.min_iou,
            "min_cover": config.min_cover,
            "grow": config.grow,
        },
        "shards": report.shards,
        "samples": report.samples,
        "samples_with_residual_faces": len({(r.shard, r.sample_id) for r in report.leaks}),
        "residual_faces": [r.to_json() for r in report.leaks],
        "unchecked": report.unchecked,
    }
    out = Location(config.out)
    out.publish_bytes(dumps(body).encode(), "report", "residual_faces.json")
    return out.url("report", "residual_faces.json")
