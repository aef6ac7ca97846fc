"""The keys of one ``faceveil run``: the run's signing key, the key epoch workers seal under,
and the escrow.

The job driver builds one :class:`JobKeys` before any shard is processed, publishes
``escrow.json`` and the ``job.start`` (or ``job.resume``) audit entry, hands
:attr:`JobKeys.sealing` (public values only: the epoch's escrow public key, or the KMS key ARN)
to the workers, and finally writes ``job.manifests`` and ``job.end``. No worker and no driver
ever holds a key that opens sealed originals: each sample's data key is made by the worker and
wrapped to the epoch's public key (:mod:`manifests.sealing`).

Key epochs: every run (the first and each ``--resume``) gets a new epoch under the same policy
(:func:`manifests.escrow.add_epoch`); its id labels every manifest sealed in that run.

Signing key: one Ed25519 key per run, made in memory here, declared (public half) in the run's
first audit entry, used for that run's job entries only and gone with the process. It is never
escrowed: nobody can sign as a past run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from faceveil.manifests.audit import AuditTail, AuditWriter, key_id
from faceveil.manifests.custodian import CustodianPublic, b64e
from faceveil.manifests.errors import EscrowError
from faceveil.manifests.escrow import Escrow, Policy, ShamirPolicy, add_epoch, create_escrow
from faceveil.manifests.sealing import EpochSealing

log = logging.getLogger(__name__)

KMS_PREFIX = "aws-kms:"


def parse_kms_spec(spec: str) -> str:
    """The key ARN of a ``--kms aws-kms:ARN`` option value."""
    if not spec.startswith(KMS_PREFIX):
        raise EscrowError(f"--kms expects {KMS_PREFIX}ARN")
    return spec[len(KMS_PREFIX) :]


def custodian_details(
    custodians: tuple[CustodianPublic, ...] | list[CustodianPublic],
) -> list[dict]:
    """How audit entries list custodians: name, fingerprint and Ed25519 key (b64)."""
    return [
        {"name": c.name, "fingerprint": c.fingerprint, "ed25519": b64e(c.ed25519)}
        for c in custodians
    ]


def epoch_sealing(escrow: Escrow, escrow_id: str) -> EpochSealing:
    """The public sealing values of one epoch of ``escrow``."""
    epoch = escrow.epoch(escrow_id)
    if isinstance(escrow.policy, ShamirPolicy):
        return EpochSealing(escrow.job_id, escrow_id, "shamir", public_key=epoch.public_key)
    return EpochSealing(escrow.job_id, escrow_id, "kms", key_arn=escrow.policy.key_arn)


def policy_details(policy: Policy) -> dict:
    """How audit entries record a policy: the full policy, and custodians' signing keys."""
    doc = {"scheme": policy.scheme, "policy": policy.to_json()}
    if isinstance(policy, ShamirPolicy):
        doc |= {"threshold": policy.threshold, "custodians": custodian_details(policy.custodians)}
    else:
        doc["key_arn"] = policy.key_arn
    return doc


@dataclass(frozen=True)
class JobKeys:
    """Everything key-related a job driver holds in memory while it runs."""

    job_id: str
    sealing: EpochSealing
    audit: AuditWriter
    escrow: Escrow

    @classmethod
    def create(cls, job_id: str, policy: Policy, actor: str = "operator") -> JobKeys:
        """A new escrow with one epoch under ``policy`` and a new run signing key."""
        escrow = create_escrow(job_id, policy)
        return cls(job_id, epoch_sealing(escrow, escrow.escrow_ids[-1]), _writer(actor), escrow)

    @classmethod
    def resume(cls, escrow: Escrow, job_id: str, actor: str = "operator") -> JobKeys:
        """A new epoch of ``escrow`` (same policy) and a new signing key for a resumed run."""
        if escrow.job_id != job_id:
            raise EscrowError("escrow.json belongs to another job")
        escrow = add_epoch(escrow)
        log.info("job %s resumed with key epoch %d of its escrow", job_id, len(escrow.epochs))
        sealing = epoch_sealing(escrow, escrow.escrow_ids[-1])
        return cls(job_id, sealing, _writer(actor), escrow)

    @property
    def escrow_id(self) -> str:
        """This run's key epoch."""
        return self.sealing.escrow_id

    @property
    def audit_public_key(self) -> bytes:
        """This run's signing key's raw Ed25519 public key."""
        return self.audit.public_key

    def start_details(self) -> dict:
        """``details`` of the run's first entry: job id, signing key, key epoch, policy."""
        escrow = {
            "escrow_id": self.escrow_id,
            "epoch": self.escrow.escrow_ids.index(self.escrow_id) + 1,
            "revision": self.escrow.revision,
            **policy_details(self.escrow.policy),
        }
        return {
            "job_id": self.job_id,
            "audit_public_key": b64e(self.audit_public_key),
            "audit_key_id": key_id(self.audit_public_key),
            "escrow": escrow,
        }

    def job_json_fields(self, tail: AuditTail) -> dict:
        """What ``job.json`` records of this run's audit trail (a hint: job.json is unsigned)."""
        return {
            "audit": {
                "public_key": b64e(self.audit_public_key),
                "key_id": key_id(self.audit_public_key),
                "tail": str(tail),
            }
        }


def _writer(actor: str) -> AuditWriter:
    return AuditWriter(Ed25519PrivateKey.generate(), actor)
