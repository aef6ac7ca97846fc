"""Format-2 outputs (master-key escrow of earlier releases) still parse and restore, through the
read-only modules escrow_v2 and restore_v2; the two formats are never confused."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests import escrow as escrow_v3
from manifests import escrow_v2, restore_v2
from manifests.envelope import Envelope, MasterKey
from manifests.errors import EscrowError, RestoreError
from tests.manifests.conftest import FAST_KDF

PASSPHRASE = "requester passphrase 123"


@pytest.fixture
def legacy(custodians):
    master = MasterKey.generate()
    pubs = [c.public() for c in custodians]
    escrow = escrow_v2.create_shamir_escrow(master, "job-1", pubs, 2, Ed25519PrivateKey.generate())
    return master, escrow.dumps()


def test_a_format_2_escrow_parses_and_restores(legacy, custodians):
    master, data = legacy
    assert escrow_v3.escrow_format(data) == "faceveil-escrow/2"
    escrow = escrow_v2.Escrow.loads(data)
    request, key_file = restore_v2.create_request(
        escrow, "restore", ["k1"], "old job", "bob", PASSPHRASE, params=FAST_KDF
    )
    request = restore_v2.RestoreRequest.loads(request.dumps())
    key = restore_v2.load_request_key(request, key_file, PASSPHRASE)
    approvals = [
        restore_v2.Approval.loads(restore_v2.approve(escrow, request, c).dumps())
        for c in custodians[1:]
    ]
    masters = restore_v2.recover_masters(escrow, request, key, approvals, "restore")
    assert masters == {escrow.escrow_ids[0]: master}
    env = Envelope(master, "job-1")
    box = env.seal("shard-000000", "k1", 0, b"pixels", "0" * 64)
    opened = Envelope(masters[escrow.escrow_ids[0]], "job-1").open(
        "shard-000000", "k1", 0, box.nonce, box.ciphertext, "0" * 64
    )
    assert opened == b"pixels"
    with pytest.raises(RestoreError, match="needs 2"):
        restore_v2.recover_masters(escrow, request, key, approvals[:1], "restore")


def test_the_formats_are_not_confused(legacy, custodians):
    _, data = legacy
    with pytest.raises(EscrowError, match="unknown format"):
        escrow_v3.Escrow.loads(data)
    policy = escrow_v3.ShamirPolicy(2, tuple(c.public() for c in custodians))
    v3 = escrow_v3.create_escrow("job-1", policy).dumps()
    assert escrow_v3.escrow_format(v3) == "faceveil-escrow/3"
    with pytest.raises(EscrowError):
        escrow_v2.Escrow.loads(v3)
    assert json.loads(v3)["format"] != json.loads(data)["format"]
