"""The escrow folder of a Ray Dataset anonymized through ``jobs.api``: opened before the rows
stream (escrow.json, job.json, the signed start of audit.jsonl), filled by the actors one part
per batch (keys/shard-N.parquet, then its _done/ marker; N from the batch's keys), signed when
closed (job.manifests, job.end). The same files, formats and signatures as a ``faceveil run``
output, less data/."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace

import ray

from faceveil.anon_core.results import AnonResult
from faceveil.jobs.config import EscrowConfig
from faceveil.jobs.jobmanifest import JOB_FILE, JobManifest, JobStatus
from faceveil.jobs.keys import Secrets, audit, escrow_mode, hold_secrets, open_keys
from faceveil.jobs.storage import Location
from faceveil.manifests.envelope import EMPTY_SHA256
from faceveil.manifests.jobsecret import sample_id
from faceveil.manifests.keymanifest import SampleToSeal

log = logging.getLogger(__name__)

COUNTS = ("samples_in", "anonymized", "no_face", "quarantined", "faces")
_EXTS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif", "GIF": "gif"}


@dataclass(frozen=True)
class EscrowSpec:
    """Where and to whom a Dataset's originals are escrowed: ``out``, a new folder (path or
    ``s3://``) for the escrow files; ``custodians`` (public key files) with ``threshold`` M,
    or ``kms`` (``aws-kms:KEY_ARN``); ``secret_file``, the job secret that turns row ids into
    sample ids (default ~/.faceveil/secret.key, created on first use)."""

    out: str
    custodians: tuple[str, ...] = ()
    threshold: int = 0
    kms: str | None = None
    secret_file: str | None = None


class DatasetEscrow:
    """The escrow of one ``anonymize`` run: ``open`` before, ``close`` after consuming the
    Dataset (or use it as a context manager). What the user must keep: the escrow folder
    (``out``) and the job secret; the custodians keep their private keys."""

    def __init__(self, spec: EscrowSpec) -> None:
        self.spec = spec
        self.out = Location(spec.out)
        self.keys = None  # JobKeys once opened
        self.manifest: JobManifest | None = None
        self._secrets: Secrets | None = None
        self._holder = None

    def __enter__(self) -> DatasetEscrow:
        return self.open()

    def __exit__(self, kind, value, tb) -> None:
        self.close(complete=kind is None)

    def open(self) -> DatasetEscrow:
        """Publish escrow.json and job.json and sign the log's start; refuses a used folder."""
        from faceveil.jobs import __version__
        from faceveil.jobs.keyfile import load_secret

        if self.keys is not None:
            return self
        if self.out.listdir():
            raise ValueError(f"{self.out.uri} is not empty: give each anonymize run a new folder")
        flags = EscrowConfig(tuple(self.spec.custodians), self.spec.threshold, self.spec.kms)
        config = {"api": "ray.data"}
        digest = hashlib.sha256(b"ray.data").hexdigest()
        versions = {"faceveil": __version__, "ray": ray.__version__}
        manifest = JobManifest.new(config, digest, versions)
        manifest = replace(manifest, escrow_mode=escrow_mode(flags, None, False))
        secret = load_secret(self.spec.secret_file)
        self.keys = open_keys(flags, self.out, manifest, resuming=False)
        self.manifest = manifest
        self.out.publish_json(manifest.to_json(), JOB_FILE)
        details = {**self.keys.start_details(), "resumed": False, "shards_to_do": None,
                   "audit_anchor": None}  # fmt: skip
        audit(self.out, self.keys, "job.start", details)
        self._secrets = Secrets(secret, self.keys.sealing)
        return self

    def key_holder(self):
        """The KeyHolder actor the anonymizing actors fetch the Secrets from (Ray must run)."""
        self.open()
        if self._holder is None:
            self._holder = hold_secrets(self._secrets)
        return self._holder

    def close(self, complete: bool = True) -> dict:
        """Sign the row list of every part the actors sealed, then ``job.end``; record totals
        in job.json; returns the totals."""
        if self.keys is None:
            raise ValueError("this escrow was never opened")
        markers = [self.out.read_json("_done", n) for n in self.out.listdir("_done")]
        sealed = {m["shard"]: m["manifest"] for m in markers}
        audit(self.out, self.keys, "job.manifests",
              {"escrow_id": self.keys.escrow_id, "manifests": sealed})  # fmt: skip
        totals = {k: sum(m[k] for m in markers) for k in COUNTS}
        status = JobStatus.COMPLETE if complete else JobStatus.INCOMPLETE
        details = {"status": str(status), "totals": totals, "failed_shards": 0}
        tail = audit(self.out, self.keys, "job.end", details)
        self.manifest = replace(self.manifest, status=status, totals=totals,
                                shards={"total": len(markers), "done": len(markers)},
                                **self.keys.job_json_fields(tail))  # fmt: skip
        self.out.publish_json(self.manifest.to_json(), JOB_FILE)
        log.info("escrow of %d rows in %d parts signed in %s", totals["samples_in"],
                 len(markers), self.out.uri)  # fmt: skip
        return totals


class PartSeal:
    """In an actor: seals the originals of one batch of rows as a part of the escrow folder."""

    def __init__(self, secrets: Secrets, out_uri: str) -> None:
        self.secrets = secrets
        self.out = Location(out_uri)

    def seal(self, ids: list[str], images: list[bytes | None], results: list[AnonResult]):
        """Each row's sample id (HMAC of its id); seals every row's original file (a row
        without image bytes has nothing to seal), publishes ``keys/PART.parquet`` and then
        the part's marker with its counts and row-list commitment."""
        keys = [sample_id(self.secrets.secret, i) for i in ids]
        # Named like a job's shards (restore requests name shards so), from the batch's keys.
        digest = hashlib.sha256("\n".join(keys).encode()).digest()
        part = f"shard-{int.from_bytes(digest[:8]):020d}"
        sealer = self.secrets.sealer(part)
        sealed: set[str] = set()
        for key, row_id, image, result in zip(keys, ids, images, results, strict=True):
            if image is None or key in sealed:
                continue  # nothing to seal, or the same id twice in the batch: sealed once
            sealed.add(key)
            sealer.seal_sample(SampleToSeal(key, _source_uri(row_id, result), EMPTY_SHA256), image)
        data = sealer.manifest_bytes()
        self.out.publish_bytes(data, "keys", f"{part}.parquet")
        counts = {"samples_in": len(results), "faces": sum(len(r.faces) for r in results)}
        for status in ("anonymized", "no_face", "quarantined"):
            counts[status] = sum(r.status == status for r in results)
        marker = {"shard": part, **counts, "escrow_id": sealer.escrow_id,
                  "manifest": sealer.commitment(),
                  "files": {"keys": {"path": f"keys/{part}.parquet",
                                     "sha256": hashlib.sha256(data).hexdigest()}}}  # fmt: skip
        self.out.publish_json(marker, "_done", f"{part}.json")
        return keys


def _source_uri(row_id: str, result: AnonResult) -> str:
    """What the sealed row names as its source: the id (a content id gets the image's
    extension, so a restored file gets it too)."""
    if not row_id.startswith("sha256:") or result.original is None:
        return row_id
    return f"{row_id}.{_EXTS.get(result.original.format, 'bin')}"
