"""The surrogate method's first pass on the actor pool.

Actors collect the faces of a sample of the shards in parallel (detect, 68 landmarks, identity
embeddings, donor candidates); the driver merges their tables into identity clusters and a donor
bank; the second pass's actors receive that context. Face tables and the context hold original
pixels, so they cross process boundaries only sealed under the run's transit key
(``manifests.jobsecret.seal_object``): whatever Ray spills to disk is ciphertext, and nothing is
written to the output or to a temp file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import ray

from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.imageio import ImageError, decode_image
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.pipeline import AnonConfig, build_embedder
from faceveil.anon_core.surrogate.attributes import LinearAttribute
from faceveil.anon_core.surrogate.build import surrogate_from_context, surrogate_from_table
from faceveil.anon_core.surrogate.context import FaceTable, collect_faces
from faceveil.jobs.keys import Secrets
from faceveil.jobs.progress import BufferedProgress
from faceveil.jobs.raypool import ActorSpec, actor_device, map_over_shards, shard_tasks
from faceveil.jobs.shard import ShardEntry
from faceveil.jobs.shardio import ShardFormatError
from faceveil.jobs.worker import ShardTask, classify_sample, shard_samples
from faceveil.manifests.jobsecret import open_object, seal_object

log = logging.getLogger(__name__)


class FirstPassError(RuntimeError):
    """The first pass cannot give the surrogate what it needs; the message says why."""


def key_fingerprint(key: bytes) -> str:
    """A short public name for a pseudonym key, recorded in job.json so a resume with another
    key is refused. It reveals nothing of a random 256-bit key."""
    import hmac

    return hmac.new(key, b"faceveil pseudonym-key fingerprint", hashlib.sha256).hexdigest()[:16]


def first_pass_entries(entries: list[ShardEntry], limit: int | None) -> list[ShardEntry]:
    """The shards the first pass reads: all, or ``limit`` of them picked by a hash of their
    names (spread over the dataset, the same on every run and resume), in shard order."""
    if limit is None or limit >= len(entries):
        return list(entries)
    ranked = sorted(entries, key=lambda e: hashlib.sha256(e.shard.encode()).digest())
    return sorted(ranked[:limit], key=lambda e: e.shard)


class FaceCollector:
    """Ray Data actor of the first pass: one shard in, its face table (sealed) out."""

    def __init__(self, spec: ActorSpec):
        import cv2

        cv2.setNumThreads(max(1, spec.anon.threads))
        anon = replace(spec.anon, device=actor_device(spec.anon.device))
        self.anon = anon
        self.detector = build_detector(
            anon.detector, anon.model_root, anon.threshold, anon.device, anon.threads
        )
        self.landmarks = Dlib68()
        self.embedder = build_embedder(anon)
        self.max_donor_faces = spec.max_donor_faces
        secrets = ray.get(spec.key_holder.get.remote())
        self.transit = secrets.transit
        self.secret = secrets.secret  # finds the sources of a planned shard
        self.progress = BufferedProgress(spec.counter) if spec.counter is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self._one(task) for task in shard_tasks(batch)]
        if self.progress is not None:
            self.progress.flush()
        return {k: [r[i] for r in rows] for i, k in enumerate(("shard", "table", "error"))}

    def _one(self, task: ShardTask) -> tuple[str, bytes, str]:
        try:
            table = collect_faces(
                self._images(task),
                self.detector,
                self.landmarks,
                self.embedder,
                self.max_donor_faces,
            )
        except ShardFormatError as exc:  # the second pass fails this shard too, and says so
            log.warning("first pass leaves out shard %s: %s", task.shard, exc)
            return task.shard, b"", ""
        except Exception as exc:  # noqa: BLE001  (any other failure stops the job)
            return task.shard, b"", f"{type(exc).__name__}: {exc}"
        return task.shard, seal_object(self.transit, table), ""

    def _images(self, task: ShardTask) -> Iterator[tuple[str, np.ndarray]]:
        """(sample id, RGB) of every sample the second pass would anonymize."""
        seen: set[str] = set()
        with shard_samples(task, self.secret, self.anon.max_file_bytes) as samples:
            for sample in samples:
                if self.progress is not None:
                    self.progress(1, 0, 0)
                pending = classify_sample(sample, seen, None)
                if pending.result is not None:
                    continue
                try:
                    yield sample.sample_id, decode_image(pending.original, self.anon.max_pixels).rgb
                except (ImageError, MemoryError):
                    continue  # quarantined by the second pass


@dataclass(frozen=True)
class SurrogateSetup:
    """What second-pass actors need besides the Secrets: the context, sealed, in the object
    store. ``info`` is the public summary recorded in job.json."""

    context: ray.ObjectRef
    info: dict


def _merge(rows, transit: bytes, limit: int) -> tuple[FaceTable | None, list[str]]:
    merged: FaceTable | None = None
    left_out: list[str] = []
    for row in rows:
        if row["error"]:
            raise FirstPassError(
                f"first pass failed on {row['shard']} ({row['error']}); fix the cause and rerun"
            )
        if not row["table"]:
            left_out.append(row["shard"])
            continue
        table = open_object(transit, row["table"])
        # merge keeps the donors a single pass would keep, whatever order shards arrive in
        merged = table if merged is None else FaceTable.merge([merged, table], limit)
    return merged, left_out


def run_first_pass(
    tasks: list[ShardTask],
    spec: ActorSpec,
    secrets: Secrets,
    attributes: tuple[LinearAttribute, ...] = (),
) -> SurrogateSetup:
    """Collect faces of ``tasks`` on the actor pool ``spec`` (at most one actor per task), build
    the surrogate context on the driver, check that the method can be built from it, and put it
    (sealed) in the object store."""
    anon = spec.anon
    spec = replace(spec, size=max(1, min(spec.size, len(tasks))))
    ds = map_over_shards(tasks, FaceCollector, spec)
    table, left_out = _merge(ds.iter_rows(), secrets.transit, spec.max_donor_faces)
    if table is None or len(table) == 0:
        raise FirstPassError("the first pass found no face with reliable landmarks")
    try:
        method, context = surrogate_from_table(
            secrets.pseudonym_key, table, anon.method_options, attributes
        )
    except ValueError as exc:
        raise FirstPassError(f"the surrogate cannot be built from this dataset: {exc}") from None
    info = {
        "shards": len(tasks) - len(left_out),
        "shards_left_out": sorted(left_out),
        "faces": len(table),
        "identities": len(context.clusters),
        "donors": len(context.bank),
        "donor_identities": context.bank.identities,
        "embedder": context.embedder,
        "attribute_probes": [p.name for p in attributes],
    }
    log.info(
        "first pass: %d faces of %d identities; donor bank %r",
        len(table),
        len(context.clusters),
        context.bank,
    )
    del method
    return SurrogateSetup(ray.put(seal_object(secrets.transit, context)), info)


def surrogate_method(anon: AnonConfig, secrets: Secrets, context_ref: ray.ObjectRef):
    """The surrogate method of a second-pass actor, built from the sealed context."""
    context = open_object(secrets.transit, ray.get(context_ref))
    return surrogate_from_context(secrets.pseudonym_key, context, anon.method_options)
