"""Job key bootstrap: a new key epoch per run (first and every resume), workers given public
values only, and what each run's first audit entry records."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle

import boto3
import pytest

from faceveil.manifests import threshold
from faceveil.manifests.audit import key_id, verify_log
from faceveil.manifests.custodian import b64d, b64e
from faceveil.manifests.errors import EscrowError
from faceveil.manifests.escrow import Escrow, KmsPolicy, ShamirPolicy, ShardRef, kms_open_shard_key
from faceveil.manifests.jobkeys import JobKeys, epoch_sealing, parse_kms_spec
from faceveil.manifests.keymanifest import SampleToSeal, ShardSealer, load_key_manifest
from faceveil.manifests.sealing import EpochSealing

ANON = hashlib.sha256(b"anon").hexdigest()


@pytest.fixture
def policy(custodians) -> ShamirPolicy:
    return ShamirPolicy(2, tuple(c.public() for c in custodians))


def test_sealing_holds_public_values_only(policy, custodians):
    keys = JobKeys.create("job-1", policy)
    (epoch,) = keys.escrow.epochs
    sealing = keys.sealing
    assert {f.name for f in dataclasses.fields(EpochSealing)} == {
        "job_id", "escrow_id", "scheme", "public_key", "key_arn",
    }  # fmt: skip
    assert (sealing.job_id, sealing.escrow_id, sealing.scheme) == (
        "job-1",
        epoch.escrow_id,
        "shamir",
    )
    assert sealing.public_key == epoch.public_key and sealing.key_arn == ""
    threshold.check_point(sealing.public_key, "the epoch key")
    shipped = pickle.dumps(sealing)  # what Ray sends to every worker
    for share in (epoch.open_share(c) for c in custodians):
        assert share.value not in shipped and share.value.hex() not in repr(sealing)
    assert sealing == epoch_sealing(Escrow.loads(keys.escrow.dumps()), keys.escrow_id)


def test_start_details_carry_the_policy_and_the_run_key(policy, custodians):
    keys = JobKeys.create("job-1", policy)
    details = keys.start_details()
    assert details["job_id"] == "job-1"
    assert b64d(details["audit_public_key"], "key", 32) == keys.audit_public_key
    assert details["audit_key_id"] == key_id(keys.audit_public_key)
    escrow = details["escrow"]
    assert escrow["escrow_id"] == keys.escrow_id and escrow["epoch"] == 1
    assert escrow["revision"] == keys.escrow.revision and escrow["scheme"] == "shamir"
    assert escrow["policy"] == policy.to_json() and escrow["threshold"] == 2
    assert escrow["custodians"] == [
        {"name": c.name, "fingerprint": c.public().fingerprint, "ed25519": b64e(c.public().ed25519)}
        for c in custodians
    ]
    log, tail = keys.audit.append(b"", "job.start", details)
    report = verify_log(log, pinned_job_keys=[key_id(keys.audit_public_key)])
    assert report.tail == tail and report.job_id == "job-1"
    assert keys.job_json_fields(tail)["audit"] == {
        "public_key": b64e(keys.audit_public_key),
        "key_id": key_id(keys.audit_public_key),
        "tail": str(tail),
    }


def test_every_resume_is_a_new_epoch_with_a_new_key(policy, custodians):
    first = JobKeys.create("job-1", policy)
    second = JobKeys.resume(Escrow.loads(first.escrow.dumps()), "job-1")
    escrow = second.escrow
    assert escrow.escrow_ids == (first.escrow_id, second.escrow_id)
    assert escrow.epochs[0] == first.escrow.epochs[0] and escrow.revision != first.escrow.revision
    assert second.sealing.public_key == escrow.epochs[1].public_key != first.sealing.public_key
    assert second.audit_public_key != first.audit_public_key
    assert second.start_details()["escrow"]["epoch"] == 2
    assert Escrow.loads(escrow.dumps()) == escrow
    third = JobKeys.resume(escrow, "job-1")
    assert len(third.escrow.epochs) == 3 and third.escrow.epochs[:2] == escrow.epochs
    assert len({k.sealing.public_key for k in (first, second, third)}) == 3
    with pytest.raises(EscrowError, match="another job"):
        JobKeys.resume(escrow, "job-2")


def test_workers_seal_under_the_run_epoch(policy, custodians):
    first = JobKeys.create("job-1", policy)
    resumed = JobKeys.resume(first.escrow, "job-1")
    sealing = pickle.loads(pickle.dumps(resumed.sealing))
    sealer = ShardSealer(sealing.shard_keys("shard-000003"), "shard-000003")
    sealer.seal_sample(SampleToSeal("k1", "s3://raw/a.jpg", ANON))
    manifest = load_key_manifest(sealer.manifest_bytes())
    assert manifest.escrow_id == resumed.escrow_id
    wrapped = threshold.WrappedKey.from_bytes(manifest.rows[0].wrapped_key)
    before, now = resumed.escrow.epochs
    label = before.label("shard-000003", "k1")
    with pytest.raises(threshold.ThresholdError):
        wrapped.check_label(label)
    label = now.label("shard-000003", "k1")
    for epoch, opens in ((now, True), (before, False)):
        shares = [epoch.open_share(c) for c in custodians[:2]]
        partials = [threshold.partial_decrypt(s, wrapped, label) for s in shares]
        shared = threshold.combine_partials(partials, 2)
        if opens:
            assert len(threshold.unwrap(epoch.public_key, wrapped, label, shared)) == 32
        else:  # the previous run's custodian shares do not open this run's keys
            with pytest.raises(threshold.ThresholdError):
                threshold.unwrap(now.public_key, wrapped, label, shared)


def test_kms_job_keys_against_moto_server(moto_endpoint, aws_env):
    client = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_endpoint)
    policy = KmsPolicy(client.create_key()["KeyMetadata"]["Arn"])
    first = JobKeys.create("job-k", policy)
    assert first.sealing == EpochSealing("job-k", first.escrow_id, "kms", key_arn=policy.key_arn)
    second = JobKeys.resume(Escrow.loads(first.escrow.dumps()), "job-k")
    details = second.start_details()["escrow"]
    assert details | {"escrow_id": None, "revision": None} == {
        "scheme": "kms",
        "policy": policy.to_json(),
        "escrow_id": None,
        "epoch": 2,
        "revision": None,
        "key_arn": policy.key_arn,
    }
    keys = second.sealing.shard_keys("shard-000000", kms=client)
    opened = kms_open_shard_key(
        client, policy, ShardRef("job-k", second.escrow_id, "shard-000000"), keys.kms_blob
    )
    assert opened == keys.shard_key
    with pytest.raises(EscrowError, match="KMS decrypt failed"):
        kms_open_shard_key(
            client, policy, ShardRef("job-k", first.escrow_id, "shard-000000"), keys.kms_blob
        )


def test_parse_kms_spec():
    arn = "arn:aws:kms:eu-west-1:123456789012:key/abc"
    assert parse_kms_spec("aws-kms:" + arn) == arn
    with pytest.raises(EscrowError):
        parse_kms_spec(arn)
