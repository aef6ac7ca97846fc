"""The job's ``escrow.json``: one escrowed master key per key epoch, split M-of-N to custodians
or wrapped by AWS KMS, all under one policy.

Key epochs
    Each run of a job (the first run and every ``--resume``) makes its own master key, because
    a resumed run cannot get the earlier key back without M custodians or KMS. Each such key is
    one *epoch* of ``escrow.json``, named by its ``escrow_id``; key manifests record the epoch
    that sealed them (see :mod:`manifests.keymanifest`). Every epoch is escrowed under the same
    policy (custodians and threshold, or KMS key): a resume copies the policy of the job's first
    epoch, a reshare re-splits every epoch to the new custodians, and a rekey replaces all
    epochs by one. An epoch keeps its ``escrow_id`` across reshares (it names a master key); the
    file's ``revision`` (random hex) changes on every change (new epoch, reshare, rekey), and
    restore requests are bound to it.

Never a key itself. The document::

    {"format": "faceveil-escrow/2", "job_id": J, "revision": hex,
     "scheme": "shamir", "threshold": M, "custodians": [{name, fingerprint, x25519, ed25519}],
     -- or --  "scheme": "kms", "key_arn": ARN,
     "epochs": [{"escrow_id": random hex,
                 "key_check": HMAC-SHA256(master, "faceveil/key-check/v1|" + J) hex,
                 "audit_key": {"public": b64 Ed25519 job signing key, "sealed": b64(nonce + GCM)},
                 "shares": [{fingerprint, sealed}]      (shamir, one per custodian)
                 -- or -- "wrapped_key": b64 KMS ciphertext blob (kms)}, ...]}

``shamir``: in each epoch, share ``i`` (x = i+1) of that epoch's master key is sealed to custodian
``i``'s X25519 key with context ``"escrow-share"`` and AAD = the canonical JSON of the epoch's
*header* (:meth:`Epoch.header`: job id, escrow id, key check, scheme, audit public key, threshold
and custodian fingerprints) and the custodian's fingerprint, so a share only opens inside the
epoch it was made for.

``kms``: each epoch's master key is wrapped with an EncryptionContext binding
``faceveil:job_id``, ``faceveil:escrow_id``, ``faceveil:purpose`` (``master-key``) and
``faceveil:audit_key`` (the epoch's job signing key id).

Each epoch's job signing key (Ed25519, signs that run's audit entries) is sealed under
``HKDF(master, salt=job_id, info="faceveil/audit-key-wrap/v1")`` of the epoch's master key, so
whoever recovers that key (M custodians, or KMS access) can sign as that run, and nobody else
can. The first epoch's key is the job's long-lived signing key: entries written after recovery
(restore, reshare, rekey) are signed with it, and a rekey carries it into the new epoch.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from manifests import shamir
from manifests.audit import key_id
from manifests.custodian import (
    CustodianPrivate,
    CustodianPublic,
    b64d,
    b64e,
    canonical_json,
    open_sealed,
    seal_to,
)
from manifests.envelope import MasterKey
from manifests.errors import CustodianKeyError, EscrowError, ShareError

log = logging.getLogger(__name__)

