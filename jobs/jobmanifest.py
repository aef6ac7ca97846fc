"""The typed record of OUT/job.json: its schema, versions and (de)serialisation, in one place."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, fields, replace
from enum import StrEnum

JOB_FILE = "job.json"

# job.json's schema, recorded in its ``schema`` field. A job.json without that field is of
# version 1 (the same fields, written before the schema was named) and is still read on resume.
SCHEMA = "faceveil-job/2"
SCHEMA_V1 = "faceveil-job/1"
READABLE_SCHEMAS = (SCHEMA_V1, SCHEMA)


class JobStatus(StrEnum):
    """Where a job stands: ``running`` until its run ends, then ``complete`` when every shard has
    its marker, else ``incomplete`` (rerun with --resume)."""

    RUNNING = "running"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"


class JobFileError(ValueError):
    """job.json is of an unknown schema, or holds fields that schema does not have."""


@dataclass(frozen=True)
class JobManifest:
    """What OUT/job.json holds (it is unsigned: the signed record is the audit log).

    ``config`` is the part of the job config that decides output bytes, ``config_sha256`` its
    hash (a resume must match it); ``escrow_mode`` is 'shamir', 'kms' or 'none'. With
    ``--method surrogate``, ``surrogate`` holds the pseudonym key's fingerprint, the first
    pass's public summary and (``second_pass``) how many images the last run's second pass
    took from the first pass's face records and how many it detected again. ``totals``,
    ``shards`` and ``failed`` are recorded when a run ends; ``audit`` (with escrow) is the job's
    audit key and the log's tail at that end, a hint only.
    Fields left None are not written. The schema is written by ``to_json`` and checked by
    ``from_json``; it is not a field.
    """

    job_id: str
    created: float
    config: dict
    config_sha256: str
    versions: dict
    status: JobStatus = JobStatus.RUNNING
    escrow_mode: str | None = None
    surrogate: dict | None = None
    totals: dict | None = None
    shards: dict | None = None
    failed: list[dict] | None = None
    audit: dict | None = None

    @classmethod
    def new(cls, config: dict, config_sha256: str, versions: dict) -> JobManifest:
        """A running job with a fresh id, created now."""
        return cls(uuid.uuid4().hex, time.time(), config, config_sha256, versions)

    def to_json(self) -> dict:
        """The JSON object written to job.json (always of the current schema)."""
        doc = {
            "schema": SCHEMA,
            "job_id": self.job_id,
            "created": self.created,
            "status": str(self.status),
            "config": self.config,
            "config_sha256": self.config_sha256,
            "versions": self.versions,
            "escrow_mode": self.escrow_mode,
        }
        optional = ("surrogate", "totals", "shards", "failed", "audit")
        doc.update({k: getattr(self, k) for k in optional if getattr(self, k) is not None})
        return doc

    @classmethod
    def from_json(cls, doc: dict) -> JobManifest:
        """A job.json object of any readable schema; raises JobFileError otherwise."""
        schema = doc.get("schema", SCHEMA_V1)
        if schema not in READABLE_SCHEMAS:
            raise JobFileError(f"job.json is of schema {schema!r}, which this release cannot read")
        values = {k: v for k, v in doc.items() if k != "schema"}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise JobFileError(f"job.json has fields its schema {schema} does not: {unknown}")
        return cls(**{**values, "status": JobStatus(values["status"])})

    def with_surrogate(self, **record) -> JobManifest:
        """This manifest with ``record`` merged into its surrogate record."""
        return replace(self, surrogate={**(self.surrogate or {}), **record})
