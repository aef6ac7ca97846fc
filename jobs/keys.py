"""The key side of ``faceveil run``: escrow policy from flags, epochs on resume, audit entries."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from faceveil.jobs.config import EscrowConfig
from faceveil.jobs.jobmanifest import JobManifest
from faceveil.jobs.storage import Location
from faceveil.manifests.sealing import EpochSealing

log = logging.getLogger(__name__)

ESCROW_FILE = "escrow.json"


class EscrowRefused(ValueError):
    """The escrow flags are missing, contradictory, or differ from the job being resumed."""


@dataclass(frozen=True)
class Secrets:
    """What actors need that must never touch disk: the job secret (opens sealed source URIs);
    with ``--method surrogate``, the team's pseudonym key and ``transit``, a key made for this
    run only that encrypts what carries original pixels between processes (face tables, the
    donor bank). With escrow, ``sealing`` holds the key epoch's *public* sealing values: no
    actor ever holds a key that opens sealed originals."""

    secret: bytes
    sealing: EpochSealing | None = None
    pseudonym_key: bytes | None = None
    transit: bytes | None = None

    def sealer(self, shard: str):
        """A ShardSealer for ``shard``, or None when the job runs without escrow."""
        if self.sealing is None:
            return None
        from faceveil.manifests.keymanifest import ShardSealer

        stem = shard.removesuffix(".tar")
        return ShardSealer(self.sealing.shard_keys(stem), stem)

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


@ray.remote(num_cpus=0, max_restarts=0)
class KeyHolder:
    """Holds Secrets in process memory on the driver's node for the actors to fetch.

    Ray Data puts actor constructor arguments in the object store, which can spill to disk, and
    actor creation specs live in the GCS. Secrets therefore travel only as arguments and return
    values of direct actor calls, which Ray passes inline (they are far below its 100 KiB
    inlining limit) and never persists.
    """

    def __init__(self) -> None:
        self._secrets: Secrets | None = None

    def load(self, secrets: Secrets) -> None:
        self._secrets = secrets

    def get(self) -> Secrets:
        if self._secrets is None:
            raise RuntimeError("no secrets loaded")
        return self._secrets


def hold_secrets(secrets: Secrets):
    """Start a KeyHolder pinned to this (the driver's) node and load ``secrets`` into it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    holder = KeyHolder.options(scheduling_strategy=here).remote()
    ray.get(holder.load.remote(secrets))
    return holder


def _mode(escrow: EscrowConfig) -> str:
    chosen = [m for m, on in (("shamir", bool(escrow.custodians)), ("kms", bool(escrow.kms)),
                              ("none", escrow.no_escrow)) if on]  # fmt: skip
    if len(chosen) != 1:
        raise EscrowRefused(
            "choose how the originals are escrowed: --custodians A.pub B.pub ... --threshold M, "
            "or --kms aws-kms:KEY_ARN, or --no-escrow (originals unrecoverable, no keys/)"
        )
    return chosen[0]


def escrow_mode(escrow: EscrowConfig, recorded: str | None, resuming: bool) -> str | None:
    """'shamir', 'kms' or 'none': the flags' choice, checked against ``recorded``, what a resumed
    job recorded (a resume may give no escrow flags)."""
    given = None if resuming and _nothing_given(escrow) else _mode(escrow)
    if recorded is not None and given is not None and given != recorded:
        raise EscrowRefused(f"this job was run with escrow '{recorded}', not '{given}'")
    return recorded or given


def open_keys(escrow: EscrowConfig, out: Location, job: JobManifest, resuming: bool):
    """JobKeys for this run, or None without escrow (``job.escrow_mode``, from ``escrow_mode``,
    is 'none'); publishes escrow.json before any sealing.

    A resumed job keeps its escrow policy and gets a new key epoch; the policy must be the one
    the job's signed log records (its start entry, or a later reshare or rekey): escrow flags
    given on resume, and the policy of ``escrow.json``, are checked against it and any
    difference is refused before anything is sealed.
    """
    from faceveil.manifests.escrow import ESCROW_FORMAT, Escrow, escrow_format
    from faceveil.manifests.jobkeys import JobKeys

    if job.escrow_mode == "none":
        log.warning("no escrow: originals are not sealed and can never be restored")
        return None
    if resuming and out.exists(ESCROW_FILE) and _log_started(out):
        data = out.read_bytes(ESCROW_FILE)
        if escrow_format(data) != ESCROW_FORMAT:
            raise EscrowRefused(
                "this job's escrow.json is of an earlier format (master keys); its samples can "
                "be restored, but a resume would mix formats: finish it with the release that "
                "started it, or start a new job"
            )
        existing = Escrow.loads(data)
        _check_resume_policy(existing, escrow, out)
        keys = JobKeys.resume(existing, job.job_id)
    else:
        # A first run, or one whose job.start was never written: nothing was sealed under an
        # escrow.json that no signed entry vouches for, so it is replaced from the flags.
        if _nothing_given(escrow):
            raise EscrowRefused("the job's log records no escrow policy yet: give the escrow flags")
        keys = JobKeys.create(job.job_id, policy_from_flags(escrow))
    out.publish_bytes(keys.escrow.dumps(), ESCROW_FILE)
    return keys


def policy_from_flags(escrow: EscrowConfig):
    """The escrow policy the run flags ask for (Shamir or KMS)."""
    from faceveil.manifests.custodian import CustodianPublic
    from faceveil.manifests.escrow import KmsPolicy, ShamirPolicy
    from faceveil.manifests.jobkeys import parse_kms_spec

    if escrow.kms:
        return KmsPolicy(parse_kms_spec(escrow.kms))
    custodians = tuple(CustodianPublic.load(p) for p in escrow.custodians)
    return ShamirPolicy(escrow.threshold, custodians)


def recorded_policy(entries: list[dict]):
    """The escrow policy a (verified) audit log records last: its job.start, or a later
    escrow.reshare or escrow.rekey; None if it records none."""
    from faceveil.manifests.escrow import policy_from_json

    found = None
    for entry in entries:
        details = entry.get("details") or {}
        if entry.get("action") == "job.start":
            found = (details.get("escrow") or {}).get("policy", found)
        elif entry.get("action") in ("escrow.reshare", "escrow.rekey"):
            found = details.get("policy", found)
    return None if found is None else policy_from_json(found)


def _check_resume_policy(existing, escrow: EscrowConfig, out: Location) -> None:
    from faceveil.jobs.auditlog import verify_tree

    entries = list(verify_tree(out).report.entries) if out.exists("audit.jsonl") else []
    recorded = recorded_policy(entries)
    if recorded is None:
        raise EscrowRefused("the job's audit log records no escrow policy; refusing to resume")
    if existing.policy != recorded:
        raise EscrowRefused(
            "escrow.json's policy differs from the policy the job's signed log records "
            f"({recorded.describe()}): escrow.json was altered; refusing to resume"
        )
    if not _nothing_given(escrow) and policy_from_flags(escrow) != recorded:
        raise EscrowRefused(
            f"the escrow flags differ from this job's policy ({recorded.describe()}); "
            "a resume keeps the policy: give the same flags, or none"
        )


def _log_started(out: Location) -> bool:
    from faceveil.jobs.auditlog import log_started

    return log_started(out)


def _nothing_given(escrow: EscrowConfig) -> bool:
    return not (escrow.custodians or escrow.kms or escrow.no_escrow)


def audit(out: Location, keys, action: str, details: dict, anchor: str | None = None):
    """Append a signed entry to OUT/audit.jsonl, and its tail to the log's anchor (``anchor``,
    when given, must be the one the log's start entry names); returns the new tail."""
    from faceveil.jobs.auditlog import append

    return append(out, keys.audit, action, details, anchor)
