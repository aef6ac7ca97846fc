"""``anonymize(ds)``: a Ray Dataset of images in, a Ray Dataset of anonymized rows out, lazily.

For teams that already hold a ``ray.data.Dataset``::

    anon = anonymize(ds, image_column="image", method="blur")      # nothing runs yet
    anon.write_parquet("s3://bucket/faces-anon/")                   # streams through an actor pool

Each block goes through a pool of :class:`RowAnonymizer` actors, which build the anonymizer as
the job's ``ShardProcessor`` does (``anon_core.accel.select_backend`` on the ``ActorSpec`` the
job uses) and run the same per-image core (``FaceAnonymizer``: decode, detect, anonymize,
encode). Every other column is carried through unchanged; the image column gets the
anonymized bytes (an HF image struct keeps its type, its ``path`` set to null). Four columns
are added: ``faceveil_status`` (anonymized, no_face, quarantined), ``faceveil_reason``
(``stage: reason`` of a quarantined row), ``faceveil_faces`` and ``faceveil_meta`` (the public
metadata as JSON: boxes, scores, landmarks, method). Fail closed: a row whose image cannot be
decoded, detected or anonymized keeps its row, with a null image and its reason (nothing is
dropped, no original passes), or with ``on_error="raise"`` fails the dataset.

With escrow (:class:`DatasetEscrow`), each row also gets ``faceveil_key`` (HMAC of the row's
id under the job secret) and its original file is sealed to the escrow as ``faceveil run``
seals a quarantined sample: the escrow folder gets ``escrow.json``, ``job.json``, the signed
``audit.jsonl``, ``keys/shard-*.parquet`` and ``_done/shard-*.json``, and closing the escrow
signs every part's row list. ``faceveil restore request/approve/apply ESCROW_OUT --key KEY``
then gives back the original file of that row.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace

import pyarrow as pa
import ray

from faceveil.anon_core.accel import select_backend
from faceveil.anon_core.imageio import DEFAULT_MAX_PIXELS
from faceveil.anon_core.pipeline import AnonConfig, AnonResult, quarantined
from faceveil.jobs.config import PoolConfig
from faceveil.jobs.escrowdir import DatasetEscrow, EscrowSpec, PartSeal
from faceveil.jobs.raypool import ActorSpec, actor_device, connect, size_pool

log = logging.getLogger(__name__)

__all__ = ["DatasetEscrow", "DatasetOptions", "EscrowSpec", "RowAnonymizer", "anonymize"]

STATUS, REASON, FACES, META, KEY = (
    "faceveil_status",
    "faceveil_reason",
    "faceveil_faces",
    "faceveil_meta",
    "faceveil_key",
)
ON_ERROR = ("quarantine", "raise")


@dataclass(frozen=True)
class DatasetOptions:
    """How ``anonymize`` runs: the detector (``detector``, ``model_root``, ``threshold``), the
    per-image pixel cap, rows per actor call (``batch_size``), the actor pool (``num_actors``
    None: as many as the cluster's CPUs allow with one left free; ``cpus_per_actor``,
    ``gpus_per_actor``), ``on_error`` ("quarantine": keep the row with a null image and its
    reason; "raise": fail the dataset) and ``id_column``, the column whose value names a row
    for its escrow key (None: the sha256 of the image bytes, so identical images share a key)."""

    detector: str = "centerface"
    model_root: str | None = None
    threshold: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int = 16
    num_actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    on_error: str = "quarantine"
    id_column: str | None = None

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {self.on_error!r}")

    def anon_config(self, method: str) -> AnonConfig:
        if method == "surrogate":
            raise ValueError(
                "the surrogate method needs a first pass over the whole dataset (identities, "
                "donors): use faceveil run; the Dataset API offers blur, pixelate and mask"
            )
        device = "cuda" if self.gpus_per_actor > 0 else "cpu"
        threads = max(1, int(self.cpus_per_actor))
        return AnonConfig(method=method, detector=self.detector, model_root=self.model_root,
                          threshold=self.threshold, device=device, threads=threads,
                          max_pixels=self.max_pixels)  # fmt: skip


@dataclass(frozen=True)
class _RowSpec:
    """What a RowAnonymizer needs besides the job's ActorSpec: the columns and the policy."""

    image_column: str
    id_column: str | None
    on_error: str
    escrow_out: str | None


class RowAnonymizer:
    """Ray Data actor: loads the models once, then anonymizes batches of rows (pyarrow tables).

    Built like the job's ``ShardProcessor``: the device the actor really has, the accelerated
    path when it is ``cuda``, the Secrets from the job's ``KeyHolder`` (with escrow).
    """

    def __init__(self, spec: ActorSpec, rows: _RowSpec):
        import cv2

        cv2.setNumThreads(max(1, spec.anon.threads))
        self.anonymizer = select_backend(replace(spec.anon, device=actor_device(spec.anon.device)))
        self.rows = rows
        self.seal = None  # with escrow: seals each batch's originals as one part
        if rows.escrow_out is not None:
            self.seal = PartSeal(ray.get(spec.key_holder.get.remote()), rows.escrow_out)

    def __call__(self, batch: pa.Table) -> pa.Table:
        column = batch.column(self.rows.image_column)
        images = [_image_bytes(v) for v in column.to_pylist()]
        results = self._results(images)
        if self.rows.on_error == "raise" and (bad := [r for r in results if not r.ok]):
            raise ValueError(f"{len(bad)} rows could not be anonymized, first: {_reason(bad[0])}")
        out = [r.encoded if r.ok else None for r in results]
        index = batch.schema.get_field_index(self.rows.image_column)
        batch = batch.set_column(index, self.rows.image_column, _like(column.type, out))
        added = {
            STATUS: pa.array([r.status for r in results], pa.string()),
            REASON: pa.array([_reason(r) for r in results], pa.string()),
            FACES: pa.array([len(r.faces) for r in results], pa.int32()),
            META: pa.array([json.dumps(r.metadata(), sort_keys=True) for r in results]),
        }
        if self.seal is not None:
            ids = self._ids(batch, images)
            added[KEY] = pa.array(self.seal.seal(ids, images, results), pa.string())
        for name, values in added.items():
            batch = batch.append_column(name, values)
        return batch

    def _results(self, images: list[bytes | None]) -> list[AnonResult]:
        todo = [i for i, image in enumerate(images) if image]
        found = self.anonymizer.batch([images[i] for i in todo]) if todo else []
        results = [quarantined("input", "no image bytes in the row")] * len(images)
        for i, result in zip(todo, found, strict=True):
            results[i] = result
        return results

    def _ids(self, batch: pa.Table, images: list[bytes | None]) -> list[str]:
        if self.rows.id_column is not None:
            return [str(v) for v in batch.column(self.rows.id_column).to_pylist()]
        return [f"sha256:{hashlib.sha256(image or b'').hexdigest()}" for image in images]


def _image_bytes(value) -> bytes | None:
    """Raw bytes of an image cell: bytes, or an HF image struct ``{bytes, path}``."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if value else None


def _like(kind: pa.DataType, values: list[bytes | None]) -> pa.Array:
    """``values`` as a column of the input's type: binary, or an HF struct with a null path."""
    if pa.types.is_struct(kind):
        names = [kind.field(i).name for i in range(kind.num_fields)]
        rows = [None if v is None else {n: (v if n == "bytes" else None) for n in names}
                for v in values]  # fmt: skip
        return pa.array(rows, kind)
    return pa.array(values, kind if pa.types.is_binary(kind) else pa.binary())


def _reason(result: AnonResult) -> str:
    return f"{result.stage}: {result.reason}" if not result.ok else ""


def anonymize(
    ds: ray.data.Dataset,
    image_column: str = "image",
    method: str = "blur",
    escrow: DatasetEscrow | None = None,
    options: DatasetOptions | None = None,
) -> ray.data.Dataset:
    """``ds`` with every face in ``image_column`` anonymized by ``method``, as a lazy Dataset
    (see the module's docstring for its columns and the fail-closed rule).

    Nothing runs until the result is consumed. ``escrow``: an opened :class:`DatasetEscrow`
    whose folder receives the sealed originals as the rows stream through; close it after
    consuming the result (a ``with`` block does) to sign them. Without it the originals are
    unrecoverable.
    """
    options = options or DatasetOptions()
    anon = options.anon_config(method)
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None and image_column not in schema.names:
        raise ValueError(f"the dataset has no column {image_column!r}")
    connect(None)
    pool = PoolConfig(options.num_actors, options.cpus_per_actor, options.gpus_per_actor,
                      options.batch_size)  # fmt: skip
    size = size_pool(pool, ray.cluster_resources())
    holder = escrow.key_holder() if escrow is not None else None
    spec = ActorSpec(anon, holder, pool, size=size)
    rows = _RowSpec(image_column, options.id_column, options.on_error,
                    escrow.spec.out if escrow is not None else None)  # fmt: skip
    return ds.map_batches(
        RowAnonymizer,
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor or None,
        fn_constructor_args=(spec, rows),
    )
