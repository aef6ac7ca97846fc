"""The keys of one ``faceveil run``: master key, envelope, escrow and the job's audit writer.

The job driver builds one :class:`JobKeys` before any shard is processed, publishes
``escrow.json`` and the ``job.start`` audit entry, hands :attr:`JobKeys.envelope` to the workers
(each builds a :class:`~manifests.keymanifest.ShardSealer` per shard) and finally writes the
``job.end`` entry and records :meth:`JobKeys.job_json_fields` (audit key and tail) in ``job.json``.
Escrow is mandatory unless ``no_escrow`` is asked for explicitly; without escrow the sealed
manifests can never be opened, and the master key dies with the process.

Key epochs: a resumed run (``faceveil run --resume``) cannot get the first run's master key back,
so :meth:`JobKeys.resume` makes a new master key and a new job signing key and adds them to the
job's ``escrow.json`` as a new key epoch, under the policy of the existing escrow (same
custodians and threshold, or the same KMS key). Its envelope is labelled with the new epoch's
``escrow_id``, which every manifest sealed with it records. The driver must publish the new
``escrow.json`` (:attr:`JobKeys.escrow`, all epochs) *before* any shard is sealed, so that no
manifest ever names an epoch that ``escrow.json`` lacks.

Trust model change with epochs: each run signs its own audit entries with its own job signing
key (sealed under its epoch's master key and declared in its epoch of ``escrow.json``), so
``faceveil audit verify`` trusts the union of the epochs' job signing keys (see
:mod:`manifests.audit`). The first epoch's key stays the job's long-lived key: entries written
after recovery (restore, reshare, rekey) are signed with it, and a rekey keeps it.
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
from manifests.escrow import (
    Escrow,
    KmsClient,
    add_epoch,
    create_kms_escrow,
    create_shamir_escrow,
)

log = logging.getLogger(__name__)

KMS_PREFIX = "aws-kms:"


def parse_kms_spec(spec: str) -> str:
    """The key ARN of a ``--kms aws-kms:ARN`` option value."""
    if not spec.startswith(KMS_PREFIX):
        raise EscrowError(f"--kms expects {KMS_PREFIX}ARN")
    return spec[len(KMS_PREFIX) :]


def custodian_details(custodians: Sequence[CustodianPublic]) -> list[dict]:
    """How audit entries list custodians: name, fingerprint and Ed25519 key (b64)."""
    return [
        {"name": c.name, "fingerprint": c.fingerprint, "ed25519": b64e(c.ed25519)}
        for c in custodians
    ]


@dataclass(frozen=True)
class JobKeys:
    """Everything key-related a job driver holds in memory while it runs."""

    job_id: str
    envelope: Envelope
    audit: AuditWriter
    escrow: Escrow | None

    @classmethod
    def create(
        cls,
        job_id: str,
        custodians: Sequence[CustodianPublic] = (),
        threshold: int = 0,
        kms_arn: str | None = None,
        kms: KmsClient | None = None,
        no_escrow: bool = False,
        actor: str = "operator",
    ) -> JobKeys:
        """New master and job signing keys, escrowed to custodians (M-of-N) or to KMS.

        Exactly one of ``custodians`` (with ``threshold``), ``kms_arn`` (with ``kms``) or
        ``no_escrow=True`` must be chosen; anything else raises :class:`EscrowError`.
        """
        chosen = [bool(custodians), bool(kms_arn), no_escrow]
        if sum(chosen) != 1:
            raise EscrowError(
                "choose exactly one of custodians (+ threshold), a KMS key, or no escrow"
            )
        master, signing = MasterKey.generate(), Ed25519PrivateKey.generate()
        escrow = None
        if custodians:
            escrow = create_shamir_escrow(master, job_id, custodians, threshold, signing)
        elif kms_arn:
            if kms is None:
                raise EscrowError("a KMS client is needed for a KMS escrow")
            escrow = create_kms_escrow(master, job_id, kms_arn, kms, signing)
        else:
            log.warning("job %s runs without escrow: its key manifests can never be opened", job_id)
        escrow_id = escrow.escrow_ids[-1] if escrow is not None else None
        return cls(job_id, Envelope(master, job_id, escrow_id), AuditWriter(signing, actor), escrow)

    @classmethod
    def resume(
        cls, escrow: Escrow, job_id: str, kms: KmsClient | None = None, actor: str = "operator"
    ) -> JobKeys:
        """New master and job signing keys for a resumed run, as a new epoch of ``escrow``.

        The epoch has the policy of ``escrow`` (a KMS escrow needs ``kms``, a client for
        ``escrow.key_arn``); :attr:`escrow` then holds every epoch, the new one last, and
        :attr:`envelope` seals under the new one.
        """
        if escrow.job_id != job_id:
            raise EscrowError("escrow.json belongs to another job")
        master, signing = MasterKey.generate(), Ed25519PrivateKey.generate()
        escrow = add_epoch(escrow, master, signing, kms)
        log.info("job %s resumed with key epoch %d of its escrow", job_id, len(escrow.epochs))
        return cls(
            job_id,
            Envelope(master, job_id, escrow.escrow_ids[-1]),
            AuditWriter(signing, actor),
            escrow,
        )

    @property
    def escrow_id(self) -> str | None:
        """This run's key epoch (None without escrow)."""
        return self.envelope.escrow_id

    @property
    def audit_public_key(self) -> bytes:
        """This run's job signing key's raw Ed25519 public key."""
        return self.audit.public_key

    def start_details(self) -> dict:
        """``details`` of the run's first entry: job id, signing key, key epoch, escrow policy.

        ``escrow.epoch`` is this run's epoch number (1 for the first run) and
        ``escrow.escrow_id`` its id.
        """
        escrow: dict = {"scheme": "none"}
        if self.escrow is not None:
            escrow = {
                "scheme": self.escrow.scheme,
                "escrow_id": self.escrow_id,
                "epoch": self.escrow.escrow_ids.index(self.escrow_id) + 1,
                "revision": self.escrow.revision,
            }
        if self.escrow is not None and self.escrow.scheme == "shamir":
            escrow |= {
                "threshold": self.escrow.threshold,
                "custodians": custodian_details(self.escrow.custodians),
            }
        elif self.escrow is not None:
            escrow["key_arn"] = self.escrow.key_arn
        return {
            "job_id": self.job_id,
            "audit_public_key": b64e(self.audit_public_key),
            "audit_key_id": key_id(self.audit_public_key),
            "escrow": escrow,
        }

    def job_json_fields(self, tail: AuditTail) -> dict:
        """What ``job.json`` records so that ``audit verify`` can check the key and the tail.

        The key is this run's job signing key; ``audit verify`` requires it to be one of the job
        signing keys of ``escrow.json`` (or one a rekey retired).
        """
        return {
            "audit": {
                "public_key": b64e(self.audit_public_key),
                "key_id": key_id(self.audit_public_key),
                "tail": str(tail),
            }
        }
