"""Escrow: key epochs under one policy, Shamir M-of-N sealed to custodians, reshare and rekey of
every epoch, and AWS KMS against a real moto server."""

from __future__ import annotations

import base64
import json

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from manifests.audit import key_id
from manifests.custodian import CustodianPrivate
from manifests.envelope import MasterKey
from manifests.errors import DecryptionError, EscrowError
from manifests.escrow import (
    Escrow,
    add_epoch,
    create_kms_escrow,
    create_shamir_escrow,
    rekey,
    reshare,
)


@pytest.fixture
def setup(custodians):
    master, audit_key = MasterKey.generate(), Ed25519PrivateKey.generate()
    escrow = create_shamir_escrow(master, "job-1", [c.public() for c in custodians], 2, audit_key)
    return master, audit_key, escrow


@pytest.fixture
def two_epochs(setup):
    """The escrow of a job resumed once: epoch 1 (first run) and epoch 2 (the resume)."""
    master1, audit1, escrow = setup
    master2, audit2 = MasterKey.generate(), Ed25519PrivateKey.generate()
    both = add_epoch(escrow, master2, audit2)
    masters = dict(zip(both.escrow_ids, (master1, master2), strict=True))
    return both, masters, (audit1, audit2)


def test_escrow_json_holds_policy_never_the_key(setup):
    master, _, escrow = setup
    text = escrow.dumps().decode()
    doc = json.loads(text)
    assert doc["format"] == "faceveil-escrow/2" and doc["scheme"] == "shamir"
    assert doc["threshold"] == 2 and len(doc["epochs"]) == 1
    assert len(doc["epochs"][0]["shares"]) == 3
    assert [c["name"] for c in doc["custodians"]] == ["alice", "bob", "carol"]
    assert master.reveal().hex() not in text
    assert master.check_value("job-1") == doc["epochs"][0]["key_check"]
    assert Escrow.loads(text) == escrow


def test_any_two_custodians_recover_and_one_does_not(setup, custodians):
    master, audit_key, escrow = setup
    (epoch,) = escrow.epochs
    shares = [epoch.open_share(c) for c in custodians]
    assert [s.x for s in shares] == [1, 2, 3]
    for pair in ((0, 1), (0, 2), (1, 2)):
        assert epoch.recover([shares[i] for i in pair]) == master
    with pytest.raises(EscrowError, match="needs 2"):
        epoch.recover(shares[:1])
    with pytest.raises(EscrowError, match="do not combine"):
        epoch.recover([shares[0], shares[0]])
    recovered = escrow.recover({epoch.escrow_id: shares[1:]})
    signing = escrow.audit_signing_key(recovered)
    assert signing.private_bytes_raw() == audit_key.private_bytes_raw()


def test_outsider_and_share_from_another_escrow(setup, custodians):
    master, audit_key, escrow = setup
    with pytest.raises(EscrowError, match="no share"):
        escrow.open_shares(CustodianPrivate.generate("mallory"))
    other = create_shamir_escrow(master, "job-2", [c.public() for c in custodians], 2, audit_key)
    swapped = escrow.epochs[0].__dict__ | {"shares": other.epochs[0].shares}
    with pytest.raises(DecryptionError):
        type(escrow.epochs[0])(**swapped).open_share(custodians[0])


def test_tampered_header_breaks_the_shares(setup, custodians):
    _, _, escrow = setup
    doc = json.loads(escrow.dumps())
    doc["epochs"][0]["audit_key"]["public"] = doc["custodians"][0]["ed25519"]
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).open_shares(custodians[0])
    doc = json.loads(escrow.dumps())
    doc["threshold"] = 3
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).open_shares(custodians[1])


def test_policy_validation(custodians):
    master, key = MasterKey.generate(), Ed25519PrivateKey.generate()
    pubs = [c.public() for c in custodians]
    for chosen, m in ((pubs, 4), (pubs, 1), (pubs[:1], 1), ([pubs[0], pubs[0]], 2)):
        with pytest.raises(EscrowError):
            create_shamir_escrow(master, "j", chosen, m, key)
    good = json.loads(create_shamir_escrow(master, "j", pubs, 2, key).dumps())
    single_epoch_layout = {k: v for k, v in good.items() if k != "epochs"}
    single_epoch_layout |= good["epochs"][0] | {"format": "faceveil-escrow/1"}
    for bad in (
        b"{}",
        b"not json",
        json.dumps({"format": "faceveil-escrow/2"}).encode(),
        json.dumps(good | {"epochs": []}).encode(),
        json.dumps(good | {"epochs": good["epochs"] * 2}).encode(),
        json.dumps(good | {"revision": "r1"}).encode(),
        json.dumps(single_epoch_layout).encode(),
    ):
        with pytest.raises(EscrowError, match="invalid escrow.json"):
            Escrow.loads(bad)


def test_a_new_epoch_has_the_same_policy_and_its_own_keys(two_epochs, setup, custodians):
    both, masters, (audit1, audit2) = two_epochs
    _, _, first = setup
    assert both.escrow_ids[0] == first.escrow_ids[0] and len(set(both.escrow_ids)) == 2
    assert both.revision != first.revision and both.epochs[0] == first.epochs[0]
    assert both.custodians == first.custodians and both.threshold == 2
    assert Escrow.loads(both.dumps()) == both
    pub1, pub2 = (a.public_key().public_bytes_raw() for a in (audit1, audit2))
    assert list(both.audit_keys()) == [key_id(pub1), key_id(pub2)]
    assert set(both.signers()) >= {key_id(pub1), key_id(pub2)}
    shares = [both.open_shares(c) for c in custodians[1:]]
    recovered = both.recover({eid: [s[eid] for s in shares] for eid in both.escrow_ids})
    assert recovered == masters
    assert both.audit_signing_key(recovered).private_bytes_raw() == audit1.private_bytes_raw()
    epoch2 = both.epoch(both.escrow_ids[1])
    assert epoch2.audit_signing_key(masters[epoch2.escrow_id]).private_bytes_raw() == (
        audit2.private_bytes_raw()
    )
    with pytest.raises(EscrowError, match="no key epoch"):
        both.epoch("0" * 32)
    with pytest.raises(EscrowError, match="no shares given"):
        both.recover({both.escrow_ids[0]: [s[both.escrow_ids[0]] for s in shares]})


def test_epochs_do_not_trade_shares_or_mix_policies(two_epochs, custodians):
    both, _, _ = two_epochs
    doc = json.loads(both.dumps())
    doc["epochs"][1]["shares"] = doc["epochs"][0]["shares"]
    with pytest.raises(DecryptionError):
        Escrow.loads(json.dumps(doc)).open_shares(custodians[0])
    first, second = both.epochs
    other = type(second)(**second.__dict__ | {"threshold": 3})
    with pytest.raises(EscrowError, match="same policy"):
        Escrow(both.job_id, both.revision, (first, other))
    with pytest.raises(EscrowError, match="another job"):
        Escrow("job-2", both.revision, both.epochs)


def test_reshare_covers_every_epoch(two_epochs, custodians):
    both, masters, _ = two_epochs
    new = reshare(both, masters, [c.public() for c in custodians[1:]], 2)
    assert new.escrow_ids == both.escrow_ids and new.revision != both.revision
    assert list(new.audit_keys()) == list(both.audit_keys())
    assert [e.key_check for e in new.epochs] == [e.key_check for e in both.epochs]
    shares = [new.open_shares(c) for c in custodians[1:]]
    assert new.recover({eid: [s[eid] for s in shares] for eid in new.escrow_ids}) == masters
    with pytest.raises(EscrowError):
        new.open_shares(custodians[0])
    wrong = masters | {both.escrow_ids[1]: MasterKey.generate()}
    with pytest.raises(EscrowError, match="key-check"):
        reshare(both, wrong, [c.public() for c in custodians], 2)
    with pytest.raises(EscrowError, match="no master key"):
        reshare(
            both,
            {both.escrow_ids[0]: masters[both.escrow_ids[0]]},
            [c.public() for c in custodians],
            2,
        )


def test_rekey_collapses_every_epoch_and_makes_old_shares_useless(two_epochs, custodians):
    both, masters, (audit1, _) = two_epochs
    old_shares = [both.open_shares(c) for c in custodians[:2]]
    new_master, new = rekey(both, masters)
    (epoch,) = new.epochs
    assert epoch.escrow_id not in both.escrow_ids and new_master not in masters.values()
    assert new.threshold == 2 and new.custodians == both.custodians
    assert epoch.audit_public == audit1.public_key().public_bytes_raw()
    for eid in both.escrow_ids:
        with pytest.raises(EscrowError, match="key-check"):
            epoch.recover([s[eid] for s in old_shares])
    assert epoch.recover([epoch.open_share(c) for c in custodians[:2]]) == new_master


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
    masters = loaded.unwrap_kms(client)
    assert masters == {loaded.escrow_ids[0]: master}
    assert loaded.audit_signing_key(masters).public_key().public_bytes_raw() == (
        escrow.epochs[0].audit_public
    )
    new_master, rekeyed = rekey(loaded, masters, kms=client)
    assert rekeyed.scheme == "kms" and rekeyed.unwrap_kms(client) == {
        rekeyed.escrow_ids[0]: new_master
    }


def test_kms_epochs_round_trip_against_moto_server(kms, custodians):
    client, arn = kms
    master1, master2 = MasterKey.generate(), MasterKey.generate()
    escrow = create_kms_escrow(master1, "job-k", arn, client, Ed25519PrivateKey.generate())
    with pytest.raises(EscrowError, match="KMS client is needed"):
        add_epoch(escrow, master2, Ed25519PrivateKey.generate())
    both = Escrow.loads(add_epoch(escrow, master2, Ed25519PrivateKey.generate(), client).dumps())
    assert both.key_arn == arn and len(both.epochs) == 2
    masters = both.unwrap_kms(client)
    assert list(masters.values()) == [master1, master2]
    new_master, rekeyed = rekey(both, masters, kms=client)
    assert len(rekeyed.epochs) == 1 and rekeyed.unwrap_kms(client) == {
        rekeyed.escrow_ids[0]: new_master
    }
    shamir = reshare(both, masters, [c.public() for c in custodians], 2)
    assert shamir.scheme == "shamir" and shamir.escrow_ids == both.escrow_ids


def test_kms_encryption_context_binds_the_job(kms):
    client, arn = kms
    escrow = create_kms_escrow(
        MasterKey.generate(), "job-k", arn, client, Ed25519PrivateKey.generate()
    )
    for field, value in (("job_id", "another-job"), ("escrow_id", "0" * 32)):
        doc = json.loads(escrow.dumps())
        if field == "job_id":
            doc[field] = value
        else:
            doc["epochs"][0][field] = value
        with pytest.raises(EscrowError, match="KMS decrypt failed"):
            Escrow.loads(json.dumps(doc)).unwrap_kms(client)
    doc = json.loads(escrow.dumps())
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    doc["epochs"][0]["audit_key"]["public"] = base64.b64encode(other).decode()
    with pytest.raises(EscrowError, match="KMS decrypt failed"):
        Escrow.loads(json.dumps(doc)).unwrap_kms(client)
    with pytest.raises(EscrowError, match="ARN"):
        create_kms_escrow(
            MasterKey.generate(), "j", "not-an-arn", client, Ed25519PrivateKey.generate()
        )
