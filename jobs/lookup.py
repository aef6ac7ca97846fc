"""Subject access: the pseudonymous sample id a source file got in a job, and where that sample is.

The sample id is the job's own HMAC of the source URI (``manifests.jobsecret.sample_id``), so a URI
must be written exactly as the planner (``jobs.shard.list_sources``) wrote it: the input's protocol
(if any) followed by the fsspec path, absolute for local files, and ``TAR#MEMBER`` for an image
inside an input tar. Only shards with a ``_done`` marker count; nothing here logs a path or a URI.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from enum import StrEnum

import fsspec
import pyarrow.parquet as pq

from faceveil.jobs.plan import INDEX as PLAN_INDEX
from faceveil.jobs.plan import PLAN_DIR
from faceveil.jobs.shardio import open_tar, split_member
from faceveil.jobs.storage import Location
from faceveil.manifests.jobsecret import sample_id, secret_fingerprint

log = logging.getLogger(__name__)


class LookupStatus(StrEnum):
    """Where a looked-up sample is: in ``data/``, in quarantine, or in none of the job's
    finished shards."""

    ANONYMIZED = "anonymized"
    QUARANTINED = "quarantined"
    ABSENT = "not in this job"


class JobLookupError(ValueError):
    """The output tree cannot be searched with this secret (another job's, no markers)."""


@dataclass(frozen=True)
class Lookup:
    """Where one given file or URI is: its sample id, status, shard and quarantine reason."""

    given: str
    sample_id: str
    status: LookupStatus
    shard: str = ""
    stage: str = ""
    reason: str = ""


@dataclass
class JobIndex:
    """Sample ids of a job's finished shards: sample id -> shard, sample id -> (shard,
    stage, reason)."""

    anonymized: dict[str, str] = field(default_factory=dict)
    quarantined: dict[str, tuple[str, str, str]] = field(default_factory=dict)


def normalise_uri(given: str) -> str:
    """``given`` written as the planner writes source URIs (see the module docstring)."""
    cut = given.lower().find(".tar#")
    if cut >= 0:
        return normalise_uri(given[: cut + 4]) + given[cut + 4 :]
    _, path = fsspec.core.url_to_fs(given)
    protocol = given.split("://", 1)[0] + "://" if "://" in given else ""
    return protocol + path


def _data_keys(out: Location, rel: str) -> set[str]:
    """Sample ids in a data tar, from its headers only (no member is read)."""
    with out.fs.open(out.path(rel), "rb") as f, open_tar(f) as tar:
        return {split_member(info.name)[0] for info in tar if info.isreg()}


def load_index(out: Location) -> JobIndex:
    """The finished shards of the job in ``out``: their anonymized and quarantined keys."""
    markers = [name for name in out.listdir("_done") if name.endswith(".json")]
    if not markers:
        raise JobLookupError(f"{out.uri} has no finished shards (no _done markers)")
    index = JobIndex()
    for name in markers:
        files = out.read_json("_done", name).get("files", {})
        shard = name.removesuffix(".json")
        if "data" in files:
            for key in _data_keys(out, files["data"]["path"]):
                index.anonymized[key] = shard
        if "quarantine" in files:
            raw = out.read_bytes(files["quarantine"]["path"])
            table = pq.read_table(io.BytesIO(raw), columns=["key", "stage", "reason"])
            for row in table.to_pylist():
                index.quarantined[row["key"]] = (shard, row["stage"], row["reason"])
    return index


def check_secret(out: Location, secret: bytes) -> None:
    """Refuse a secret that is not the one that sharded this job (when OUT records it)."""
    if not out.exists(PLAN_DIR, PLAN_INDEX):
        log.info("the output tree does not record its secret fingerprint; it cannot be checked")
        return
    recorded = out.read_json(PLAN_DIR, PLAN_INDEX).get("secret_fingerprint")
    if recorded != secret_fingerprint(secret):
        raise JobLookupError("this secret is not the one the job used (its fingerprint differs)")


def lookup(out: Location, secret: bytes, given: list[str]) -> list[Lookup]:
    """For each file path or URI in ``given``: its sample id and where the sample is in ``out``."""
    check_secret(out, secret)
    index = load_index(out)
    found = []
    for item in given:
        key = sample_id(secret, normalise_uri(item))
        if key in index.anonymized:
            found.append(Lookup(item, key, LookupStatus.ANONYMIZED, index.anonymized[key]))
        elif key in index.quarantined:
            shard, stage, reason = index.quarantined[key]
            found.append(Lookup(item, key, LookupStatus.QUARANTINED, shard, stage, reason))
        else:
            found.append(Lookup(item, key, LookupStatus.ABSENT))
    log.info("looked up %d samples: %d not in this job", len(found),
             sum(f.status == LookupStatus.ABSENT for f in found))  # fmt: skip
    return found
