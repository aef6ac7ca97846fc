"""The key side of ``faceveil run``: escrow policy from flags, epochs on resume, audit entries."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from jobs.config import EscrowConfig
from jobs.storage import Location

log = logging.getLogger(__name__)

ESCROW_FILE = "escrow.json"


class EscrowRefused(ValueError):
    """The escrow flags are missing, contradictory, or differ from the job being resumed."""


@dataclass(frozen=True)
class Secrets:
    """What actors need that must never touch disk: the job secret (opens sealed source URIs);
    with escrow, the envelope that seals originals; with ``--method surrogate``, the team's
    pseudonym key and ``transit``, a key made for this run only that encrypts what carries
    original pixels between processes (face tables, the donor bank)."""

    secret: bytes
    envelope: object | None = None
    pseudonym_key: bytes | None = None
    transit: bytes | None = None

    def sealer(self, shard: str):
        """A ShardSealer for ``shard``, or None when the job runs without escrow."""
        if self.envelope is None:
            return None
        from manifests.keymanifest import ShardSealer

        return ShardSealer(self.envelope, shard.removesuffix(".tar"))

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


_NONCE = 12


def seal_object(key: bytes, obj: object) -> bytes:
    """``obj`` pickled and encrypted (AES-256-GCM) under ``key``, for the object store: what
    Ray spills to disk is then ciphertext."""
    import os
    import pickle

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), None)


def open_object(key: bytes, blob: bytes) -> object:
    """The object ``seal_object`` sealed; ValueError when ``blob`` was not sealed under ``key``
    or was changed (nothing is unpickled then)."""
    import pickle

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        plain = AESGCM(key).decrypt(bytes(blob[:_NONCE]), bytes(blob[_NONCE:]), None)
    except InvalidTag:
        raise ValueError("sealed object does not open with this run's transit key") from None
    return pickle.loads(plain)  # authenticated: written by this run's own processes


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


def escrow_mode(escrow: EscrowConfig, job: dict, resuming: bool) -> str:
    """'shamir', 'kms' or 'none', checked against what a resumed job recorded; records it."""
    recorded = job.get("escrow_mode")
    given = None if resuming and _nothing_given(escrow) else _mode(escrow)
    if recorded is not None and given is not None and given != recorded:
        raise EscrowRefused(f"this job was run with escrow '{recorded}', not '{given}'")
    job["escrow_mode"] = recorded or given
    return job["escrow_mode"]


def open_keys(escrow: EscrowConfig, out: Location, job: dict, resuming: bool):
    """JobKeys for this run, or None without escrow; publishes escrow.json before any sealing.

    A resumed job keeps its escrow policy and gets a new key epoch (the first run's master key
    is gone by design); flags given on resume must match what the job recorded.
    """
    from manifests.custodian import CustodianPublic
    from manifests.escrow import Escrow, make_kms_client
    from manifests.jobkeys import JobKeys, parse_kms_spec

    mode = escrow_mode(escrow, job, resuming)
    if mode == "none":
        log.warning("no escrow: originals are not sealed and can never be restored")
        return None
    if resuming and out.exists(ESCROW_FILE):
        existing = Escrow.loads(out.read_bytes(ESCROW_FILE))
        kms = make_kms_client(existing.key_arn) if existing.scheme == "kms" else None
        keys = JobKeys.resume(existing, job["job_id"], kms=kms)
    elif mode == "shamir":
        custodians = [CustodianPublic.load(p) for p in escrow.custodians]
        keys = JobKeys.create(job["job_id"], custodians=custodians, threshold=escrow.threshold)
    else:
        arn = parse_kms_spec(escrow.kms)
        keys = JobKeys.create(job["job_id"], kms_arn=arn, kms=make_kms_client(arn))
    out.publish_bytes(keys.escrow.dumps(), ESCROW_FILE)
    return keys


def _nothing_given(escrow: EscrowConfig) -> bool:
    return not (escrow.custodians or escrow.kms or escrow.no_escrow)


def audit(out: Location, keys, action: str, details: dict, anchor: str | None = None):
    """Append a signed entry to OUT/audit.jsonl, and its tail to the log's anchor (``anchor``,
    when given, must be the one the log's start entry names); returns the new tail."""
    from jobs.auditlog import append

    return append(out, keys.audit, action, details, anchor)
