"""The surrogate method's first pass on the actor pool.

Actors collect the faces of a sample of the shards in parallel (detect, 68 landmarks, identity
embeddings, donor candidates); the driver merges their tables into identity clusters and a donor
bank; the second pass's actors receive that context. Unless the job turns it off, each actor
also keeps its shard's face work (``anon_core.facememo.FaceRecords``: detections, 68 landmarks,
embeddings, keyed by the pixels) for that shard's second pass, which then reads each image once
more only to decode and anonymize it. Face tables, records and the context hold original pixels
or biometric data, so they cross process boundaries only sealed under the run's transit key
(``manifests.jobsecret.seal_object``): whatever Ray spills to disk is ciphertext, and nothing is
written to the output or to a temp file. Records travel per shard: the driver puts each one in
the object store as it arrives and a ``RecordShelf`` hands it, once, to the actor that
anonymizes that shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, replace

import numpy as np
import ray

from faceveil.anon_core.detectors import build_detector
from faceveil.anon_core.facememo import FaceMemo, FaceRecords
from faceveil.anon_core.imageio import ImageError, decode_image
from faceveil.anon_core.landmarks import Dlib68
from faceveil.anon_core.pipeline import AnonConfig, FaceAnonymizer, build_embedder
from faceveil.anon_core.stage import config_detector
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
        self.records = spec.face_records is not None  # keep each shard's face work
        self.models = models_tag(anon)
        secrets = ray.get(spec.key_holder.get.remote())
        self.transit = secrets.transit
        self.secret = secrets.secret  # finds the sources of a planned shard
        self.progress = BufferedProgress(spec.counter) if spec.counter is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [self._one(task) for task in shard_tasks(batch)]
        if self.progress is not None:
            self.progress.flush()
        columns = ("shard", "table", "records", "error")
        return {k: [r[i] for r in rows] for i, k in enumerate(columns)}

    def _one(self, task: ShardTask) -> tuple[str, bytes, bytes, str]:
        memo = FaceMemo(FaceRecords(self.models), keep=True)
        wrap = self.records
        try:
            table = collect_faces(
                self._images(task),
                memo.detector(self.detector) if wrap else self.detector,
                memo.landmarks(self.landmarks) if wrap else self.landmarks,
                memo.embedder(self.embedder) if wrap else self.embedder,
                self.max_donor_faces,
            )
        except ShardFormatError as exc:  # the second pass fails this shard too, and says so
            log.warning("first pass leaves out shard %s: %s", task.shard, exc)
            return task.shard, b"", b"", ""
        except Exception as exc:  # noqa: BLE001  (any other failure stops the job)
            return task.shard, b"", b"", f"{type(exc).__name__}: {exc}"
        records = seal_object(self.transit, memo.records) if wrap else b""
        return task.shard, seal_object(self.transit, table), records, ""

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


def _merge(
    rows, transit: bytes, limit: int, shelve: Callable[[str, bytes], None]
) -> tuple[FaceTable | None, list[str]]:
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
        if row["records"]:
            shelve(row["shard"], row["records"])
        table = open_object(transit, row["table"])
        # merge keeps the donors a single pass would keep, whatever order shards arrive in
        merged = table if merged is None else FaceTable.merge([merged, table], limit)
    return merged, left_out


def run_first_pass(
    tasks: list[ShardTask],
    spec: ActorSpec,
    secrets: Secrets,
    attributes: tuple[LinearAttribute, ...] = (),
    keep: Collection[str] = (),
) -> SurrogateSetup:
    """Collect faces of ``tasks`` on the actor pool ``spec`` (at most one actor per task), build
    the surrogate context on the driver, check that the method can be built from it, and put it
    (sealed) in the object store. With a ``RecordShelf`` in ``spec.face_records``, the sealed
    face records of the shards named in ``keep`` (those the second pass will anonymize) go into
    the object store, one shard at a time, and onto that shelf."""
    anon = spec.anon
    spec = replace(spec, size=max(1, min(spec.size, len(tasks))))
    ds = map_over_shards(tasks, FaceCollector, spec)
    wanted, shelf = set(keep), spec.face_records

    def shelve(shard: str, records: bytes) -> None:
        if shelf is not None and shard in wanted:
            ray.get(shelf.put.remote(shard, [ray.put(records)]))

    table, left_out = _merge(ds.iter_rows(), secrets.transit, spec.max_donor_faces, shelve)
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


def models_tag(anon: AnonConfig) -> str:
    """The models and settings whose answers face records hold: both passes of a job build
    theirs from the same AnonConfig, and a record made with others is not used."""
    used = {k: getattr(anon, k) for k in ("detector", "model_root", "threshold", "recognizer")}
    landmarks = f"{Dlib68.name}/{Dlib68.revision}"
    return json.dumps({**used, "device": anon.device, "landmarks": landmarks}, sort_keys=True)


@ray.remote(num_cpus=0)
class RecordShelf:
    """Object refs of the first pass's sealed face records, one per shard, each handed out once
    (``take``): the actor that anonymizes the shard is the last to hold it, so the object store
    frees it when that shard is done. A shard taken twice (a retried task) gets nothing and is
    computed as before."""

    def __init__(self) -> None:
        self._refs: dict[str, ray.ObjectRef] = {}

    def put(self, shard: str, ref: list[ray.ObjectRef]) -> None:
        self._refs[shard] = ref[0]

    def take(self, shard: str) -> list[ray.ObjectRef]:
        ref = self._refs.pop(shard, None)
        return [] if ref is None else [ref]

    def count(self) -> int:
        """Records not yet taken."""
        return len(self._refs)


class Recall:
    """A second-pass actor's side of the records: the ``FaceMemo`` its anonymizer's detector,
    landmark model and embedder answer through (``surrogate_anonymizer``), loaded with a
    shard's records by ``load``. Fail closed: no records, records of other models or records
    that do not open mean that everything is computed."""

    def __init__(self, shelf, transit: bytes, models: str) -> None:
        self.memo = FaceMemo()
        self.shelf, self.transit, self.models = shelf, transit, models

    def load(self, shard: str) -> None:
        """Use ``shard``'s records (if any) from now on, with fresh counts."""
        self.memo.use(self._records(shard))

    def _records(self, shard: str) -> FaceRecords | None:
        try:
            refs = ray.get(self.shelf.take.remote(shard))
            if not refs:
                return None
            records = open_object(self.transit, ray.get(refs[0]))
        except (ray.exceptions.RayError, ValueError) as exc:
            log.warning("shard %s: no first-pass records (%s); computing its faces",
                        shard, type(exc).__name__)  # fmt: skip
            return None
        if not isinstance(records, FaceRecords) or records.models != self.models:
            log.warning("shard %s: first-pass records of other models; computing its faces", shard)
            return None
        return records

    def release(self) -> tuple[int, int]:
        """Drop the shard's records; returns (images whose faces came from them, images the
        detector ran on) since ``load``."""
        counts = self.memo.counts
        self.memo.use(None)
        return counts.reused["detect"], counts.computed["detect"]


def surrogate_anonymizer(anon: AnonConfig, secrets: Secrets, spec: ActorSpec):
    """A second-pass actor's anonymizer and, when the first pass kept face records
    (``spec.face_records``), its ``Recall``, else None."""
    method = surrogate_method(anon, secrets, spec.surrogate_context)
    detector = config_detector(anon)
    if spec.face_records is None:
        return FaceAnonymizer(anon, detector=detector, method=method), None
    recall = Recall(spec.face_records, secrets.transit, models_tag(anon))
    return recall.memo.anonymizer(anon, detector, method), recall
