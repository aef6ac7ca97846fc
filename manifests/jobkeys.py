"""The keys of one ``faceveil run``: master key, envelope, escrow and the job's audit writer.

The job driver builds one :class:`JobKeys` before any shard is processed, publishes
``escrow.json`` and the ``job.start`` audit entry, hands :attr:`JobKeys.envelope` to the workers
(each builds a :class:`~manifests.keymanifest.ShardSealer` per shard) and finally writes the
``job.end`` entry and records :meth:`JobKeys.job_json_fields` (audit key and tail) in ``job.json``.
Escrow is mandatory unless ``no_escrow`` is asked for explicitly; without escrow the sealed
manifests can never be opened, and the master key dies with the process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.audit import AuditTail, AuditWriter, key_id
from manifests.custodian import CustodianPublic, b64e
from manifests.envelope import Envelope, MasterKey
from manifests.errors import EscrowError
from manifests.escrow import Escrow, KmsClient, create_kms_escrow, create_shamir_escrow

log = logging.getLogger(__name__)

KMS_PREFIX = "aws-kms:"


def parse_kms_spec(spec: str) -> str:
    """The key ARN of a ``--kms aws-kms:ARN`` option value."""
    if not spec.startswith(KMS_PREFIX):
        raise EscrowError(f"--kms expects {KMS_PREFIX}ARN")
    return spec[len(KMS_PREFIX):]


def custodian_details(custodians: Sequence[CustodianPublic]) -> list[dict]:
    """How audit entries list custodians: name, fingerprint and Ed25519 key (b64)."""
    return [{"name": c.name, "fingerprint": c.fingerprint, "ed25519": b64e(c.ed25519)}
            for c in custodians]


@dataclass(frozen=True)
class JobKeys:
    """Everything key-related a job driver holds in memory while it runs."""

    job_id: str
    envelope: Envelope
    audit: AuditWriter
    escrow: Escrow | None

    @classmethod
    def create(cls, job_id: str, custodians: Sequence[CustodianPublic] = (), threshold: int = 0,
               kms_arn: str | None = None, kms: KmsClient | None = None,
               no_escrow: bool = False, actor: str = "operator") -> JobKeys:
        """New master and job signing keys, escrowed to custodians (M-of-N) or to KMS.

        Exactly one of ``custodians`` (with ``threshold``), ``kms_arn`` (with ``kms``) or
        ``no_escrow=True`` must be chosen; anything else raises :class:`EscrowError`.
        """
        chosen = [bool(custodians), bool(kms_arn), no_escrow]
        if sum(chosen) != 1:
            raise EscrowError("choose exactly one of custodians (+ threshold), a KMS key, "
                              "or no escrow")
        master, signing = MasterKey.generate(), Ed25519PrivateKey.generate()
        escrow = None
        if custodians:
            escrow = create_shamir_escrow(master, job_id, custodians, threshold, signing)
        elif kms_arn:
            if kms is None:
                raise EscrowError("a KMS client is needed for a KMS escrow")
            escrow = create_kms_escrow(master, job_id, kms_arn, kms, signing)
        else:
            log.warning("job %s runs without escrow: its key manifests can never be opened",
                        job_id)
        return cls(job_id, Envelope(master, job_id), AuditWriter(signing, actor), escrow)

    @property
    def audit_public_key(self) -> bytes:
        """The job signing key's raw Ed25519 public key."""
        return self.audit.public_key

    def start_details(self) -> dict:
        """``details`` of the ``job.start`` entry: job id, signing key and escrow policy."""
        escrow: dict = {"scheme": "none"}
        if self.escrow is not None and self.escrow.scheme == "shamir":
            escrow = {"scheme": "shamir", "escrow_id": self.escrow.escrow_id,
                      "threshold": self.escrow.threshold,
                      "custodians": custodian_details(self.escrow.custodians)}
        elif self.escrow is not None:
            escrow = {"scheme": "kms", "escrow_id": self.escrow.escrow_id,
                      "key_arn": self.escrow.key_arn}
        return {"job_id": self.job_id, "audit_public_key": b64e(self.audit_public_key),
                "audit_key_id": key_id(self.audit_public_key), "escrow": escrow}

    def job_json_fields(self, tail: AuditTail) -> dict:
        """What ``job.json`` records so that ``audit verify`` can trust the key and the tail."""
        return {"audit": {"public_key": b64e(self.audit_public_key),
                          "key_id": key_id(self.audit_public_key), "tail": str(tail)}}
