"""Job key bootstrap: exactly one escrow choice, and what the job's first audit entry records."""

from __future__ import annotations

import pytest

from manifests.audit import AuditTail, key_id, verify
from manifests.errors import EscrowError
from manifests.jobkeys import JobKeys, parse_kms_spec


def test_shamir_job_keys(custodians):
    keys = JobKeys.create("job-1", [c.public() for c in custodians], threshold=2)
    assert keys.escrow.scheme == "shamir" and keys.envelope.job_id == "job-1"
    details = keys.start_details()
    assert details["escrow"]["threshold"] == 2
    assert details["audit_key_id"] == key_id(keys.escrow.audit_public)
    log, tail = keys.audit.append(b"", "job.start", details)
    assert verify(log, keys.escrow.signers(), tail) == tail
    assert keys.job_json_fields(tail)["audit"]["tail"] == str(tail)
    master = keys.escrow.recover([keys.escrow.open_share(c) for c in custodians[:2]])
    assert master.check_value("job-1") == keys.escrow.key_check


def test_exactly_one_escrow_choice(custodians):
    pubs = [c.public() for c in custodians]
    for kwargs in ({}, {"custodians": pubs, "threshold": 2, "no_escrow": True},
                   {"custodians": pubs, "threshold": 2, "kms_arn": "arn"},
                   {"kms_arn": "arn:aws:kms:us-east-1:123456789012:key/x"}):
        with pytest.raises(EscrowError):
            JobKeys.create("j", **kwargs)
    keys = JobKeys.create("j", no_escrow=True)
    assert keys.escrow is None and keys.start_details()["escrow"] == {"scheme": "none"}


def test_parse_kms_spec():
    assert parse_kms_spec("aws-kms:arn:aws:kms:eu-west-1:123456789012:key/abc") == (
        "arn:aws:kms:eu-west-1:123456789012:key/abc")
    with pytest.raises(EscrowError):
        parse_kms_spec("arn:aws:kms:eu-west-1:123456789012:key/abc")
    assert AuditTail.parse("1:" + "0" * 64).seq == 1
