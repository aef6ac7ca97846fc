"""Escrow: Shamir M-of-N sealed to custodians, reshare and rekey, and AWS KMS against moto."""

from __future__ import annotations

import base64
import json

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.envelope import MasterKey
from manifests.errors import DecryptionError, EscrowError
from manifests.escrow import Escrow, create_kms_escrow, create_shamir_escrow, rekey, reshare


@pytest.fixture
def setup(custodians):
    master, audit_key = MasterKey.generate(), Ed25519PrivateKey.generate()
    escrow = create_shamir_escrow(master, "job-1", [c.public() for c in custodians], 2, audit_key)
    return master, audit_key, escrow


def test_escrow_json_holds_policy_never_the_key(setup):
    master, _, escrow = setup
    text = escrow.dumps().decode()
    doc = json.loads(text)
    assert doc["scheme"] == "shamir" and doc["threshold"] == 2 and len(doc["shares"]) == 3
    assert [c["name"] for c in doc["custodians"]] == ["alice", "bob", "carol"]
    assert master.reveal().hex() not in text and master.check_value("job-1") == doc["key_check"]
    assert Escrow.loads(text) == escrow


def test_any_two_custodians_recover_and_one_does_not(setup, custodians):
    master, audit_key, escrow = setup
    shares = [escrow.open_share(c) for c in custodians]
    assert [s.x for s in shares] == [1, 2, 3]
    for pair in ((0, 1), (0, 2), (1, 2)):
        assert escrow.recover([shares[i] for i in pair]) == master
    with pytest.raises(EscrowError, match="needs 2"):
        escrow.recover(shares[:1])
    with pytest.raises(EscrowError, match="do not combine"):
        escrow.recover([shares[0], shares[0]])
    recovered = escrow.recover(shares[1:])
    signing = escrow.audit_signing_key(recovered)
    assert signing.private_bytes_raw() == audit_key.private_bytes_raw()


def test_outsider_and_share_from_another_escrow(setup, custodians):
    master, audit_key, escrow = setup
    from manifests.custodian import CustodianPrivate
    with pytest.raises(EscrowError, match="no share"):
        escrow.open_share(CustodianPrivate.generate("mallory"))
    other = create_shamir_escrow(master, "job-2", [c.public() for c in custodians], 2, audit_key)
    swapped = Escrow(**{**escrow.__dict__, "shares": other.shares})
    with pytest.raises(DecryptionError):
        swapped.open_share(custodians[0])


def test_tampered_header_breaks_the_shares(setup, custodians):
    _, _, escrow = setup
    doc = json.loads(escrow.dumps())
    doc["audit_key"]["public"] = json.loads(setup[2].dumps())["custodians"][0]["ed25519"]
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).open_share(custodians[0])
    doc = json.loads(escrow.dumps())
    doc["threshold"] = 3
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).open_share(custodians[1])


def test_policy_validation(custodians):
    master, key = MasterKey.generate(), Ed25519PrivateKey.generate()
    pubs = [c.public() for c in custodians]
    for chosen, m in ((pubs, 4), (pubs, 1), (pubs[:1], 1), ([pubs[0], pubs[0]], 2)):
        with pytest.raises(EscrowError):
            create_shamir_escrow(master, "j", chosen, m, key)
    for bad in (b"{}", b"not json", json.dumps({"format": "faceveil-escrow/1"}).encode()):
        with pytest.raises(EscrowError, match="invalid escrow.json"):
            Escrow.loads(bad)


def test_reshare_keeps_the_key_and_changes_the_custodians(setup, custodians):
    master, _, escrow = setup
    new = reshare(escrow, master, [c.public() for c in custodians[1:]], 2)
    assert new.escrow_id != escrow.escrow_id and new.key_check == escrow.key_check
    assert new.audit_public == escrow.audit_public
    assert new.recover([new.open_share(c) for c in custodians[1:]]) == master
    with pytest.raises(EscrowError):
        new.open_share(custodians[0])
    with pytest.raises(EscrowError, match="key-check"):
        reshare(escrow, MasterKey.generate(), [c.public() for c in custodians], 2)


def test_rekey_makes_old_shares_useless(setup, custodians):
    master, _, escrow = setup
    old_shares = [escrow.open_share(c) for c in custodians[:2]]
    new_master, new = rekey(escrow, master)
    assert new_master != master and new.key_check != escrow.key_check
    assert new.threshold == 2 and new.custodians == escrow.custodians
    assert new.audit_public == escrow.audit_public
    with pytest.raises(EscrowError, match="key-check"):
        new.recover(old_shares)
    assert new.recover([new.open_share(c) for c in custodians[:2]]) == new_master


@pytest.fixture
def kms(moto_endpoint, aws_env):
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    arn = client.create_key(Description="faceveil test")["KeyMetadata"]["Arn"]
    return client, arn


def test_kms_round_trip_against_moto_server(kms):
    client, arn = kms
    master, audit_key = MasterKey.generate(), Ed25519PrivateKey.generate()
    escrow = create_kms_escrow(master, "job-k", arn, client, audit_key)
    text = escrow.dumps().decode()
    assert json.loads(text)["scheme"] == "kms" and master.reveal().hex() not in text
    loaded = Escrow.loads(text)
    assert loaded.unwrap_kms(client) == master
    assert loaded.audit_signing_key(master).public_key().public_bytes_raw() == escrow.audit_public
    new_master, rekeyed = rekey(loaded, master, kms=client)
    assert rekeyed.scheme == "kms" and rekeyed.unwrap_kms(client) == new_master


def test_kms_encryption_context_binds_the_job(kms):
    client, arn = kms
    escrow = create_kms_escrow(MasterKey.generate(), "job-k", arn, client,
                               Ed25519PrivateKey.generate())
    for field, value in (("job_id", "another-job"), ("escrow_id", "0" * 32)):
        doc = json.loads(escrow.dumps()) | {field: value}
        with pytest.raises(EscrowError, match="KMS decrypt failed"):
            Escrow.loads(json.dumps(doc)).unwrap_kms(client)
    doc = json.loads(escrow.dumps())
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    doc["audit_key"]["public"] = base64.b64encode(other).decode()
    with pytest.raises(EscrowError, match="KMS decrypt failed"):
        Escrow.loads(json.dumps(doc)).unwrap_kms(client)
    with pytest.raises(EscrowError, match="ARN"):
        create_kms_escrow(MasterKey.generate(), "j", "not-an-arn", client,
                          Ed25519PrivateKey.generate())
