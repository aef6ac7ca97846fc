"""Job key bootstrap: exactly one escrow choice, resumed runs as new key epochs, and what each
run's first audit entry records."""

from __future__ import annotations

import hashlib
import pickle

import boto3
import pytest

from manifests.audit import AuditTail, declared_keys, key_id, verify
from manifests.errors import EscrowError
from manifests.escrow import Escrow
from manifests.jobkeys import JobKeys, parse_kms_spec
from manifests.keymanifest import ShardSealer, load_key_manifest, open_row

ANON = hashlib.sha256(b"anon").hexdigest()


def test_shamir_job_keys(custodians):
    keys = JobKeys.create("job-1", [c.public() for c in custodians], threshold=2)
    assert keys.escrow.scheme == "shamir" and keys.envelope.job_id == "job-1"
    assert keys.envelope.escrow_id == keys.escrow_id == keys.escrow.escrow_ids[0]
    details = keys.start_details()
    assert details["escrow"]["threshold"] == 2 and details["escrow"]["epoch"] == 1
    assert details["escrow"]["escrow_id"] == keys.escrow_id
    assert details["audit_key_id"] == key_id(keys.escrow.epochs[0].audit_public)
    log, tail = keys.audit.append(b"", "job.start", details)
    assert verify(log, keys.escrow.signers(), tail) == tail
    assert keys.job_json_fields(tail)["audit"]["tail"] == str(tail)
    (epoch,) = keys.escrow.epochs
    master = epoch.recover([epoch.open_share(c) for c in custodians[:2]])
    assert master.check_value("job-1") == epoch.key_check


def test_exactly_one_escrow_choice(custodians):
    pubs = [c.public() for c in custodians]
    for kwargs in (
        {},
        {"custodians": pubs, "threshold": 2, "no_escrow": True},
        {"custodians": pubs, "threshold": 2, "kms_arn": "arn"},
        {"kms_arn": "arn:aws:kms:us-east-1:123456789012:key/x"},
    ):
        with pytest.raises(EscrowError):
            JobKeys.create("j", **kwargs)
    keys = JobKeys.create("j", no_escrow=True)
    assert keys.escrow is None and keys.start_details()["escrow"] == {"scheme": "none"}
    assert keys.envelope.escrow_id is None


def test_resume_adds_an_epoch_with_the_same_policy(custodians):
    first = JobKeys.create("job-1", [c.public() for c in custodians], threshold=2)
    published = Escrow.loads(first.escrow.dumps())
    second = JobKeys.resume(published, "job-1", actor="operator")
    escrow = second.escrow
    assert escrow.escrow_ids[0] == first.escrow_id and escrow.escrow_ids[1] == second.escrow_id
    assert escrow.custodians == first.escrow.custodians and escrow.threshold == 2
    assert escrow.revision != first.escrow.revision
    assert Escrow.loads(escrow.dumps()) == escrow
    assert second.audit_public_key != first.audit_public_key
    assert list(escrow.audit_keys()) == [
        key_id(first.audit_public_key),
        key_id(second.audit_public_key),
    ]
    details = second.start_details()
    assert details["escrow"]["epoch"] == 2 and details["escrow"]["escrow_id"] == second.escrow_id
    log, _ = first.audit.append(b"", "job.start", first.start_details())
    log, tail = second.audit.append(log, "job.resume", details)
    assert verify(log, escrow.signers(), tail) == tail
    assert set(declared_keys(log, escrow.audit_keys().values())) == {
        key_id(c.public().ed25519) for c in custodians
    }
    shares = [escrow.open_shares(c) for c in custodians[1:]]
    masters = escrow.recover({eid: [s[eid] for s in shares] for eid in escrow.escrow_ids})
    assert masters[second.escrow_id] == second.envelope._master
    assert masters[first.escrow_id] == first.envelope._master
    third = JobKeys.resume(escrow, "job-1")
    assert len(third.escrow.epochs) == 3 and third.escrow.epochs[:2] == escrow.epochs
    with pytest.raises(EscrowError, match="another job"):
        JobKeys.resume(escrow, "job-2")


def test_workers_seal_under_the_run_epoch(custodians):
    first = JobKeys.create("job-1", [c.public() for c in custodians], threshold=2)
    resumed = JobKeys.resume(first.escrow, "job-1")
    envelope = pickle.loads(pickle.dumps(resumed.envelope))
    assert envelope.escrow_id == resumed.escrow_id and repr(envelope).count("escrow_id") == 1
    sealer = ShardSealer(envelope, "shard-000003.tar")
    sealer.seal_sample("k1", "s3://raw/a.jpg", ANON)
    manifest = load_key_manifest(sealer.manifest_bytes())
    assert manifest.escrow_id == resumed.escrow_id
    assert open_row(resumed.envelope, "shard-000003", manifest.rows[0], ANON).source_uri == (
        "s3://raw/a.jpg"
    )


def test_kms_resume_against_moto_server(moto_endpoint, aws_env):
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    arn = client.create_key()["KeyMetadata"]["Arn"]
    first = JobKeys.create("job-k", kms_arn=arn, kms=client)
    published = Escrow.loads(first.escrow.dumps())
    with pytest.raises(EscrowError, match="KMS client is needed"):
        JobKeys.resume(published, "job-k")
    second = JobKeys.resume(published, "job-k", kms=client)
    assert second.start_details()["escrow"] | {"escrow_id": None, "revision": None} == {
        "scheme": "kms",
        "escrow_id": None,
        "epoch": 2,
        "revision": None,
        "key_arn": arn,
    }
    masters = Escrow.loads(second.escrow.dumps()).unwrap_kms(client)
    assert list(masters) == [first.escrow_id, second.escrow_id]
    assert masters[second.escrow_id] == second.envelope._master


def test_parse_kms_spec():
    assert parse_kms_spec("aws-kms:arn:aws:kms:eu-west-1:123456789012:key/abc") == (
        "arn:aws:kms:eu-west-1:123456789012:key/abc"
    )
    with pytest.raises(EscrowError):
        parse_kms_spec("arn:aws:kms:eu-west-1:123456789012:key/abc")
    assert AuditTail.parse("1:" + "0" * 64).seq == 1
